//! The table of secret-capable fields (docs/external-secrets.md, "The
//! secret-capable fields"): the only places where a resource may carry a reference
//! to an external secret instead of a value.

/// Extension URL naming the vault-config secret a field refers to.
pub const SECRET_REFERENCE_URL: &str = "http://health-samurai.io/fhir/secret-reference";
/// Extension URL marking a value as intentionally absent (FHIR core).
pub const DATA_ABSENT_REASON_URL: &str =
    "http://hl7.org/fhir/StructureDefinition/data-absent-reason";

/// Where a secret-capable field lives inside its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldLocation {
    /// A JSON path of object keys; the last key is the primitive (`["client", "secret"]`).
    Path(&'static [&'static str]),
    /// `jwt.keys[].k`: the primitive `k` of every element of the array at the path.
    ArrayItem {
        array: &'static [&'static str],
        field: &'static str,
    },
    /// `parameter[name=<name>].valueString` of an AidboxTopicDestination.
    NamedParameter { name: &'static str },
}

/// One secret-capable field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretField {
    pub resource_type: &'static str,
    /// How the field is written in docs and error messages.
    pub display: &'static str,
    pub location: FieldLocation,
    /// What the server uses the value for.
    pub purpose: &'static str,
    /// Whether a literal value is masked on read. Every field's is but a
    /// webhook `header`'s: a literal header is shown as written (Aidbox
    /// does), so credentials go in a referenced one.
    pub masks_literals: bool,
}

/// The published list (docs/external-secrets.md, "The secret-capable fields");
/// all ten must work end to end.
pub const SECRET_FIELDS: &[SecretField] = &[
    SecretField {
        resource_type: "Client",
        display: "secret",
        location: FieldLocation::Path(&["secret"]),
        purpose: "HTTP Basic and client_credentials authentication of the client",
        masks_literals: true,
    },
    SecretField {
        resource_type: "IdentityProvider",
        display: "client.secret",
        location: FieldLocation::Path(&["client", "secret"]),
        purpose: "client secret sent to an external OpenID Connect provider",
        masks_literals: true,
    },
    SecretField {
        resource_type: "IdentityProvider",
        display: "client.private-key",
        location: FieldLocation::Path(&["client", "private-key"]),
        purpose: "private key for private_key_jwt client authentication",
        masks_literals: true,
    },
    SecretField {
        resource_type: "IdentityProvider",
        display: "client.certificate",
        location: FieldLocation::Path(&["client", "certificate"]),
        purpose: "certificate that goes with the private key",
        masks_literals: true,
    },
    SecretField {
        resource_type: "TokenIntrospector",
        display: "jwt.secret",
        location: FieldLocation::Path(&["jwt", "secret"]),
        purpose: "shared HMAC key to verify external JWTs",
        masks_literals: true,
    },
    SecretField {
        resource_type: "TokenIntrospector",
        display: "jwt.keys[].k",
        location: FieldLocation::ArrayItem {
            array: &["jwt", "keys"],
            field: "k",
        },
        purpose: "symmetric key entries of a key set",
        masks_literals: true,
    },
    SecretField {
        resource_type: "TokenIntrospector",
        display: "introspection_endpoint.authorization",
        location: FieldLocation::Path(&["introspection_endpoint", "authorization"]),
        purpose: "Authorization header value for RFC 7662 introspection calls",
        masks_literals: true,
    },
    SecretField {
        resource_type: "AidboxTopicDestination",
        display: "parameter[name=saslJaasConfig].valueString",
        location: FieldLocation::NamedParameter {
            name: "saslJaasConfig",
        },
        purpose: "Kafka SASL JAAS configuration",
        masks_literals: true,
    },
    SecretField {
        resource_type: "AidboxTopicDestination",
        display: "parameter[name=sslKeystoreKey].valueString",
        location: FieldLocation::NamedParameter {
            name: "sslKeystoreKey",
        },
        purpose: "Kafka TLS client key",
        masks_literals: true,
    },
    SecretField {
        resource_type: "AidboxTopicDestination",
        display: "parameter[name=header].valueString",
        location: FieldLocation::NamedParameter { name: "header" },
        purpose: "an HTTP header line (Name: value) of webhook deliveries",
        masks_literals: false,
    },
];

/// The secret-capable fields of one resource type.
pub fn fields_of(resource_type: &str) -> impl Iterator<Item = &'static SecretField> + '_ {
    SECRET_FIELDS
        .iter()
        .filter(move |f| f.resource_type == resource_type)
}

/// Resource types that have at least one secret-capable field, in table order.
pub fn secret_capable_types() -> Vec<&'static str> {
    let mut types: Vec<&'static str> = Vec::new();
    for field in SECRET_FIELDS {
        if !types.contains(&field.resource_type) {
            types.push(field.resource_type);
        }
    }
    types
}

/// One place in a resource body where a secret-capable field's value sits:
/// the object that holds it (a JSON pointer) and its key there. The primitive
/// value is `parent[key]`, its extension element `parent["_" + key]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSlot {
    pub field: &'static SecretField,
    /// JSON pointer (RFC 6901) to the object holding the field.
    pub parent: String,
    pub key: &'static str,
    /// Identifies the slot across two versions of a resource: the field
    /// plus the key's `kid` (`jwt.keys[kid=a].k`) or, without one, its
    /// position (`jwt.keys[#2].k`); the parameter name for parameters.
    pub ident: String,
    /// JSON pointer to what must be unchanged between two versions for the
    /// slot to be the same one (the key entry, or the whole key array when
    /// entries have no `kid`); `None` when the ident alone is enough.
    pub context: Option<String>,
}

/// Every slot of every secret-capable field present in `body`.
pub fn field_slots(resource_type: &str, body: &serde_json::Value) -> Vec<FieldSlot> {
    use serde_json::Value;
    let mut slots = Vec::new();
    for field in fields_of(resource_type) {
        match field.location {
            FieldLocation::Path(keys) => {
                let Some((key, parents)) = keys.split_last() else {
                    continue;
                };
                let parent: String = parents.iter().map(|k| format!("/{k}")).collect();
                if body.pointer(&parent).is_some_and(Value::is_object) {
                    slots.push(FieldSlot {
                        field,
                        parent,
                        key,
                        ident: field.display.to_owned(),
                        context: None,
                    });
                }
            }
            FieldLocation::ArrayItem { array, field: key } => {
                let at: String = array.iter().map(|k| format!("/{k}")).collect();
                if let Some(items) = body.pointer(&at).and_then(Value::as_array) {
                    for (i, item) in items.iter().enumerate() {
                        if item.is_object() {
                            let parent = format!("{at}/{i}");
                            let (ident, context) = match item.get("kid").and_then(Value::as_str) {
                                Some(kid) => {
                                    (format!("{}[kid={kid}]", field.display), parent.clone())
                                }
                                None => (format!("{}[#{i}]", field.display), at.clone()),
                            };
                            slots.push(FieldSlot {
                                field,
                                parent,
                                key,
                                ident,
                                context: Some(context),
                            });
                        }
                    }
                }
            }
            FieldLocation::NamedParameter { name } => {
                if let Some(items) = body.get("parameter").and_then(Value::as_array) {
                    // A parameter that may repeat (`header`) is told
                    // apart by its place among those of its name.
                    let mut nth = 0;
                    for (i, item) in items.iter().enumerate() {
                        if item.get("name").and_then(Value::as_str) == Some(name) {
                            let parent = format!("/parameter/{i}");
                            let ident = if name == "header" {
                                format!("parameter[name=header][#{nth}].valueString")
                            } else {
                                field.display.to_owned()
                            };
                            nth += 1;
                            slots.push(FieldSlot {
                                field,
                                context: Some(parent.clone()),
                                parent,
                                key: "valueString",
                                ident,
                            });
                        }
                    }
                }
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_slots_of_all_ten_fields() {
        let body = serde_json::json!({
            "client": {"secret": "a", "private-key": "b"},
            "jwt": {"secret": "c", "keys": [{"k": "d"}, "not an object", {"kid": "x"}]},
            "introspection_endpoint": {},
            "parameter": [{"name": "other"}, {"name": "sslKeystoreKey", "valueString": "e"},
                {"name": "header", "valueString": "A: 1"}, {"name": "header", "valueString": "B: 2"}],
        });
        let idents = |t| {
            field_slots(t, &body)
                .into_iter()
                .map(|s| format!("{}{}", s.parent, s.key))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            idents("IdentityProvider"),
            ["/clientsecret", "/clientprivate-key", "/clientcertificate"]
        );
        assert_eq!(
            idents("TokenIntrospector"),
            [
                "/jwtsecret",
                "/jwt/keys/0k",
                "/jwt/keys/2k",
                "/introspection_endpointauthorization"
            ]
        );
        assert_eq!(
            idents("AidboxTopicDestination"),
            [
                "/parameter/1valueString",
                "/parameter/2valueString",
                "/parameter/3valueString"
            ]
        );
        let headers: Vec<String> = field_slots("AidboxTopicDestination", &body)
            .into_iter()
            .skip(1)
            .map(|s| s.ident)
            .collect();
        assert_eq!(
            headers,
            [
                "parameter[name=header][#0].valueString",
                "parameter[name=header][#1].valueString"
            ]
        );
        assert_eq!(idents("Client"), ["secret"]);
        assert!(idents("Patient").is_empty());
    }

    #[test]
    fn ten_fields_on_four_types() {
        assert_eq!(SECRET_FIELDS.len(), 10);
        assert_eq!(
            secret_capable_types(),
            [
                "Client",
                "IdentityProvider",
                "TokenIntrospector",
                "AidboxTopicDestination"
            ]
        );
        assert_eq!(fields_of("IdentityProvider").count(), 3);
        assert_eq!(fields_of("Patient").count(), 0);
    }
}
