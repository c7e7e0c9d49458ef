//! What a request is, as access policies see it, and the one function that
//! decides whether a caller may make it. Every way into the data — a plain
//! request, each entry of a batch or transaction — is described as
//! [`RequestFacts`] and goes through [`AuthService::authorize`]; the shape
//! policies match against is documented in `docs/security.md`.
//!
//! Route facts (resource type, id, version) come from the routed path only.
//! The query values the route acts on live in `query`, and are copied into
//! `params` (where Aidbox policies look for them) only under names that can
//! never be a route fact, so a query can neither supply nor shadow one. A
//! parameter the handler ignores is not shown at all: a policy that pins it
//! can never be satisfied by a request the handler reads differently.

use serde_json::{json, Map, Value};

use super::external::External;
use super::policy::Engine;
use super::{AuthService, Identity};

/// Route facts as they appear in `params`.
const TYPE_KEY: &str = "resource/type";
const ID_KEY: &str = "resource/id";
const VERSION_KEY: &str = "resource/version";

/// Types only root may create, change or delete: they decide who gets in
/// (`Client`, `AccessPolicy`, `TokenIntrospector`, `IdentityProvider`) or
/// where secrets and data are sent (`AidboxTopicDestination` and the topics
/// it delivers). A client that could write them could grant itself anything
/// or point a secret-bearing resource at a host of its own.
pub fn is_admin_type(resource_type: &str) -> bool {
    fhirbox_fhir::resource_types::SERVER_RESOURCE_TYPES.contains(&resource_type)
}

/// The facts of one request, built from trusted parts only.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// Lower-case HTTP method (`get`, `post`, …).
    pub method: String,
    /// The path rebuilt from the route and its decoded parameters.
    pub uri: String,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// The query string as sent.
    pub query_string: String,
    /// Decoded query parameters the route acts on (`search::acted_on`), in order.
    pub query: Vec<(String, String)>,
}

impl RequestFacts {
    /// Facts of a request on a FHIR path with the given route parameters.
    pub fn new(
        method: &str,
        resource_type: Option<&str>,
        id: Option<&str>,
        version: Option<&str>,
        query_string: Option<&str>,
        query: Vec<(String, String)>,
    ) -> RequestFacts {
        let mut uri = String::from("/fhir");
        for part in [resource_type, id].into_iter().flatten() {
            uri.push('/');
            uri.push_str(part);
        }
        if let Some(v) = version {
            uri.push_str("/_history/");
            uri.push_str(v);
        }
        RequestFacts {
            method: method.to_ascii_lowercase(),
            uri,
            resource_type: resource_type.map(str::to_owned),
            id: id.map(str::to_owned),
            version: version.map(str::to_owned),
            query_string: query_string.unwrap_or_default().to_owned(),
            query,
        }
    }

    /// Replaces the rebuilt path (for routes that are not `/fhir/{type}/{id}`
    /// shaped, such as `/fhir/_history` or `/admin/secrets`).
    pub fn with_uri(mut self, uri: impl Into<String>) -> RequestFacts {
        self.uri = uri.into();
        self
    }

    fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "post" | "put" | "patch" | "delete")
    }

    /// The JSON a `matcho` policy is matched against, for a client.
    pub fn context(&self, client_id: &str) -> Value {
        let mut context = self.request_context();
        context.insert(
            "client".into(),
            json!({"id": client_id, "resourceType": "Client"}),
        );
        Value::Object(context)
    }

    /// The JSON a `matcho` policy is matched against, for a signed-in user:
    /// the application under `client`, the User resource under `user`.
    pub fn user_context(&self, client_id: &str, user: &Value) -> Value {
        let mut context = self.request_context();
        context.insert(
            "client".into(),
            json!({"id": client_id, "resourceType": "Client"}),
        );
        context.insert("user".into(), user.clone());
        Value::Object(context)
    }

    /// The JSON a `matcho` policy is matched against, for the bearer of
    /// another issuer's token: its verified claims under `jwt`, an
    /// introspection response under `token`, the user it names under
    /// `user`, and no `client` (docs/tokens.md).
    pub fn external_context(&self, caller: &External) -> Value {
        let mut context = self.request_context();
        if let Some(claims) = &caller.jwt {
            context.insert("jwt".into(), claims.clone());
        }
        if let Some(response) = &caller.token {
            context.insert("token".into(), response.clone());
        }
        if let Some(user) = &caller.user {
            context.insert("user".into(), json!({"id": user}));
        }
        context.insert(
            "token-introspector".into(),
            json!({"id": caller.introspector, "resourceType": "TokenIntrospector"}),
        );
        Value::Object(context)
    }

    fn request_context(&self) -> Map<String, Value> {
        let mut query = Map::new();
        for (name, value) in &self.query {
            match query.get_mut(name) {
                // A repeated parameter becomes a list, so a pattern that
                // pins one value cannot be satisfied by its first copy alone.
                Some(Value::Array(values)) => values.push(Value::String(value.clone())),
                Some(first) => {
                    let first = first.take();
                    query.insert(
                        name.clone(),
                        Value::Array(vec![first, Value::String(value.clone())]),
                    );
                }
                None => {
                    query.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        // Route facts are named with a '/', which no FHIR search parameter
        // name contains; the query never contributes such a name.
        let mut params: Map<String, Value> = query
            .iter()
            .filter(|(name, _)| !name.contains('/'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in [
            (TYPE_KEY, &self.resource_type),
            (ID_KEY, &self.id),
            (VERSION_KEY, &self.version),
        ] {
            if let Some(v) = value {
                params.insert(key.to_owned(), Value::String(v.clone()));
            }
        }
        let mut context = Map::new();
        context.insert("request-method".into(), json!(self.method));
        context.insert("uri".into(), json!(self.uri));
        context.insert("query-string".into(), json!(self.query_string));
        context.insert("params".into(), Value::Object(params));
        context.insert("query".into(), Value::Object(query));
        context
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No policy linked to the client allows the request.
    NoPolicy,
    /// Only root may write this type.
    AdminType(String),
}

impl Denial {
    /// What the client is told (it names no policy and no other client).
    pub fn message(&self) -> String {
        match self {
            Denial::NoPolicy => "no access policy allows this request for this caller; link an AccessPolicy that allows it to the client (or, for another issuer's tokens, to its TokenIntrospector)".to_owned(),
            Denial::AdminType(t) => format!(
                "only the root client may create, change or delete {t} resources (see docs/security.md)"
            ),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoPolicy => "forbidden",
            Denial::AdminType(_) => "forbidden_admin_type",
        }
    }
}

impl AuthService {
    /// The one authorization decision: may `identity` make the request
    /// described by `facts`? Root may do everything; a client, or the bearer
    /// of another issuer's token, needs a linked policy that allows it, and
    /// never writes the server's own types.
    pub fn authorize(&self, identity: &Identity, facts: &RequestFacts) -> Result<(), Denial> {
        if matches!(identity, Identity::Root { .. }) {
            return Ok(());
        }
        if facts.is_write() {
            if let Some(t) = facts.resource_type.as_deref().filter(|t| is_admin_type(t)) {
                return Err(Denial::AdminType(t.to_owned()));
            }
        }
        let snapshot = self.snapshot();
        let mut context = None;
        let applies = |policy: &&super::policy::Policy| match identity {
            Identity::Client { id } => policy.applies_to(id),
            Identity::External(caller) => policy.applies_to_introspector(&caller.introspector),
            Identity::User { client, user } => policy.applies_to_user(client, user),
            Identity::Root { .. } => true,
        };
        for policy in snapshot.policies.iter().filter(applies) {
            match &policy.engine {
                Engine::Allow => return Ok(()),
                Engine::Matcho(pattern) => {
                    let value = context.get_or_insert_with(|| match identity {
                        Identity::External(caller) => facts.external_context(caller),
                        Identity::User { client, user } => {
                            let body = snapshot
                                .users
                                .get(user)
                                .map(|u| u.body.clone())
                                .unwrap_or_else(|| json!({"id": user, "resourceType": "User"}));
                            facts.user_context(client, &body)
                        }
                        _ => facts.context(identity.id()),
                    });
                    if pattern.matches(Some(value)) {
                        return Ok(());
                    }
                }
            }
        }
        Err(Denial::NoPolicy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(query: &[(&str, &str)]) -> RequestFacts {
        RequestFacts::new(
            "GET",
            Some("Patient"),
            Some("p1"),
            None,
            Some("q"),
            query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn route_facts_win_and_slashed_query_names_never_reach_params() {
        let c = facts(&[
            ("resource/id", "other"),
            ("resource/type", "Client"),
            ("resource/version", "1"),
            ("patient", "p1"),
        ])
        .context("c");
        assert_eq!(c["params"]["resource/id"], "p1");
        assert_eq!(c["params"]["resource/type"], "Patient");
        assert!(c["params"].get("resource/version").is_none());
        assert_eq!(c["params"]["patient"], "p1");
        // The caller's values stay visible, under their own key.
        assert_eq!(c["query"]["resource/type"], "Client");
        assert_eq!(c["uri"], "/fhir/Patient/p1");
        assert_eq!(c["request-method"], "get");
    }

    #[test]
    fn system_level_requests_have_no_route_facts() {
        let c = RequestFacts::new(
            "GET",
            None,
            None,
            None,
            None,
            vec![("resource/type".into(), "Patient".into())],
        )
        .context("c");
        assert_eq!(c["uri"], "/fhir");
        assert!(c["params"].as_object().unwrap().is_empty(), "{c}");
    }

    #[test]
    fn repeated_query_parameters_become_lists() {
        let c = facts(&[("patient", "p1"), ("patient", "p2"), ("patient", "p3")]).context("c");
        assert_eq!(c["params"]["patient"], json!(["p1", "p2", "p3"]));
    }

    #[test]
    fn server_types_are_admin_types() {
        for t in [
            "Client",
            "AccessPolicy",
            "TokenIntrospector",
            "IdentityProvider",
            "AidboxTopicDestination",
            "AidboxSubscriptionTopic",
        ] {
            assert!(is_admin_type(t), "{t}");
        }
        assert!(!is_admin_type("Patient"));
    }
}
