//! Who may use a secret: the requesting resource and the scope rules of the vault config
//! (docs/external-secrets.md, "The vault config": "Type/id" means one resource, "Type" means
//! every resource of that type).

use std::fmt;

/// The resource that wants to use a secret, e.g. `Client/basic`.
///
/// The caller builds it from the resource being authenticated or written; the resolver
/// checks it against the secret's scope on every use (docs/external-secrets.md, "At use").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requester {
    /// FHIR resource type, e.g. `Client`.
    pub resource_type: String,
    /// FHIR logical id, e.g. `basic`.
    pub id: String,
}

impl Requester {
    /// A requester for `resource_type/id`.
    pub fn new(resource_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            id: id.into(),
        }
    }
}

impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// One entry of a secret's scope: a whole resource type, or one instance of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeRule {
    resource_type: String,
    id: Option<String>,
}

impl ScopeRule {
    /// Every resource of `resource_type` may use the secret (`"TokenIntrospector"`).
    pub fn any_of_type(resource_type: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            id: None,
        }
    }

    /// Only `resource_type/id` may use the secret (`"Client/basic"`).
    pub fn instance(resource_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            id: Some(id.into()),
        }
    }

    /// The resource type this rule names.
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    /// The instance id, when the rule names one instance.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Whether `requester` is covered by this rule. Comparison is exact and
    /// case-sensitive, as FHIR resource types and ids are.
    pub fn allows(&self, requester: &Requester) -> bool {
        self.resource_type == requester.resource_type
            && self.id.as_deref().is_none_or(|id| id == requester.id)
    }
}

impl fmt::Display for ScopeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{}/{}", self.resource_type, id),
            None => f.write_str(&self.resource_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_rule_allows_every_instance_of_that_type_only() {
        let rule = ScopeRule::any_of_type("TokenIntrospector");
        assert!(rule.allows(&Requester::new("TokenIntrospector", "a")));
        assert!(rule.allows(&Requester::new("TokenIntrospector", "b")));
        assert!(!rule.allows(&Requester::new("Client", "a")));
        assert_eq!(rule.to_string(), "TokenIntrospector");
    }

    #[test]
    fn instance_rule_allows_that_instance_only() {
        let rule = ScopeRule::instance("Client", "basic");
        assert!(rule.allows(&Requester::new("Client", "basic")));
        assert!(!rule.allows(&Requester::new("Client", "other")));
        assert!(!rule.allows(&Requester::new("IdentityProvider", "basic")));
        // FHIR ids are case-sensitive.
        assert!(!rule.allows(&Requester::new("Client", "Basic")));
        assert_eq!(rule.to_string(), "Client/basic");
        assert_eq!(
            Requester::new("Client", "basic").to_string(),
            "Client/basic"
        );
    }
}
