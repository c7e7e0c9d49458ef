//! The write-time rules for secret references on the ten secret-capable
//! fields (docs/external-secrets.md, "Rules on write").

use fhirbox_fhir::secret_fields::{DATA_ABSENT_REASON_URL, SECRET_REFERENCE_URL};
use fhirbox_fhir::secret_refs::{
    all_fields_text, display_path, field_at, find_references, value_at, Seg,
};
use fhirbox_fhir::IssueType;
use fhirbox_secrets::{Requester, SecretError, SecretResolver};
use serde_json::Value;

use crate::error::{ErrorKind, RestError};

/// The write rules for every secret reference in `body` (docs/external-secrets.md, "Rules on write").
pub fn check_references(
    resource_type: &str,
    id: &str,
    body: &Value,
    vault: Option<&SecretResolver>,
) -> Result<(), RestError> {
    let mut found = Vec::new();
    find_references(body, &mut Vec::new(), &mut found);
    for path in found {
        let at = display_path(resource_type, &path);
        let Some(field) = field_at(body, resource_type, &path) else {
            return Err(RestError::unprocessable(format!(
                "{at} cannot refer to an external secret; the secret-capable fields are: {}",
                all_fields_text()
            ))
            .at(at));
        };
        let element = value_at(body, &path).unwrap_or(&Value::Null);
        let extensions = element
            .get("extension")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut literal_path = path.clone();
        if let Some(Seg::Key(last)) = literal_path.last_mut() {
            *last = last.trim_start_matches('_').to_owned();
        }
        if value_at(body, &literal_path).is_some_and(|v| !v.is_null()) {
            return Err(RestError::unprocessable(format!(
                "{at} has both a value and a secret reference; remove the value and keep only the reference in _{}",
                field.display.rsplit(['.', ']']).next().unwrap_or(field.display)
            ))
            .at(at));
        }
        let names: Vec<&str> = extensions
            .iter()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_REFERENCE_URL))
            .filter_map(|e| e.get("valueString").and_then(Value::as_str))
            .collect();
        let [name] = names.as_slice() else {
            return Err(RestError::unprocessable(format!(
                "{at}: the secret-reference extension needs exactly one valueString naming a secret of the vault config"
            ))
            .at(at));
        };
        if !fhirbox_secrets::is_valid_secret_name(name) {
            return Err(RestError::unprocessable(format!(
                "{at}: {name:?} is not a secret name; names use A-Z, a-z, 0-9, '.', '_' and '-'"
            ))
            .at(at));
        }
        let masked = extensions.iter().any(|e| {
            e.get("url").and_then(Value::as_str) == Some(DATA_ABSENT_REASON_URL)
                && e.get("valueCode").and_then(Value::as_str) == Some("masked")
        });
        if !masked || extensions.len() != 2 {
            return Err(RestError::unprocessable(format!(
                "{at}: a secret reference carries exactly two extensions, data-absent-reason with valueCode \"masked\" and secret-reference with the secret name"
            ))
            .at(at));
        }
        let Some(vault) = vault else {
            return Err(RestError::new(
                ErrorKind::Unprocessable,
                IssueType::NotSupported,
                format!(
                    "{at} refers to the external secret {name:?}, but external secrets are off on this server; set BOX_VAULT_CONFIG to the path of a vault config that defines it and restart"
                ),
            )
            .at(at));
        };
        if let Err(e) = vault.check_reference(name, &Requester::new(resource_type, id)) {
            let hint = match &e {
                SecretError::UnknownSecret { .. } => format!(
                    "; add it to the vault config ({})",
                    vault.config_path().display()
                ),
                SecretError::NotInScope { .. } => {
                    format!("; add \"{resource_type}/{id}\" or \"{resource_type}\" to its scope")
                }
                _ => String::new(),
            };
            return Err(RestError::unprocessable(format!("{at}: {e}{hint}")).at(at));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirbox_fhir::secret_fields::{DATA_ABSENT_REASON_URL, SECRET_REFERENCE_URL};
    use fhirbox_fhir::secret_refs::{field_at, find_references};
    use serde_json::json;

    fn reference(name: &str) -> Value {
        json!({"extension": [
            {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"},
            {"url": SECRET_REFERENCE_URL, "valueString": name}
        ]})
    }

    #[test]
    fn recognises_all_ten_locations() {
        let bodies = [
            ("Client", json!({"_secret": reference("a")})),
            (
                "IdentityProvider",
                json!({"client": {"_secret": reference("a"), "_private-key": reference("a"), "_certificate": reference("a")}}),
            ),
            (
                "TokenIntrospector",
                json!({"jwt": {"_secret": reference("a"), "keys": [{"kty": "OCT"}, {"_k": reference("a")}]},
                                         "introspection_endpoint": {"_authorization": reference("a")}}),
            ),
            (
                "AidboxTopicDestination",
                json!({"parameter": [
                {"name": "saslJaasConfig", "_valueString": reference("a")},
                {"name": "sslKeystoreKey", "_valueString": reference("a")},
                {"name": "header", "_valueString": reference("a")}]}),
            ),
        ];
        let mut total = 0;
        for (rt, body) in bodies {
            let mut found = Vec::new();
            find_references(&body, &mut Vec::new(), &mut found);
            for path in &found {
                assert!(field_at(&body, rt, path).is_some(), "{rt} {path:?}");
            }
            total += found.len();
            // With no vault, each is refused for that reason (and not as a wrong field).
            let e = check_references(rt, "x", &body, None).unwrap_err();
            assert!(
                e.message.contains("external secrets are off"),
                "{}",
                e.message
            );
        }
        assert_eq!(total, 10);
    }

    #[test]
    fn refuses_references_elsewhere_and_malformed_ones() {
        let e = check_references("Patient", "p", &json!({"_birthDate": reference("a")}), None)
            .unwrap_err();
        assert!(
            e.message.contains("Patient.birthDate cannot refer"),
            "{}",
            e.message
        );
        assert!(e.message.contains("Client.secret"));
        let e = check_references(
            "AidboxTopicDestination",
            "d",
            &json!({"parameter": [{"name": "other", "_valueString": reference("a")}]}),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("cannot refer"));
        let e = check_references(
            "Client",
            "c",
            &json!({"secret": "x", "_secret": reference("a")}),
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("both a value and a secret reference"),
            "{}",
            e.message
        );
        let only_ref =
            json!({"_secret": {"extension": [{"url": SECRET_REFERENCE_URL, "valueString": "a"}]}});
        assert!(check_references("Client", "c", &only_ref, None)
            .unwrap_err()
            .message
            .contains("exactly two extensions"));
        let bad_name = json!({"_secret": reference("../etc/passwd")});
        assert!(check_references("Client", "c", &bad_name, None)
            .unwrap_err()
            .message
            .contains("not a secret name"));
        assert!(
            check_references("Patient", "p", &json!({"name": [{"family": "x"}]}), None).is_ok()
        );
    }
}
