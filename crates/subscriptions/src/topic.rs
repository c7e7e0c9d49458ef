//! `AidboxSubscriptionTopic` resources (Aidbox's shape): which changes are
//! published. A topic has a `url` (what destinations name) and triggers,
//! each a resource type, the interactions it fires on and an optional
//! FHIRPath criterion over `%current` and `%previous`. Every write is
//! checked here (docs/subscriptions.md), criteria compiled, so a stored
//! topic can always be evaluated.

use fhirbox_fhir::search::path::{compile_with, Expr};
use serde_json::Value;

/// The longest `fhirPathCriteria` accepted (characters).
pub const MAX_CRITERIA_LEN: usize = 2048;

/// The variables a criterion may name.
const VARIABLES: &[&str] = &["current", "previous"];

/// The prefix of the canonical URL of a core resource type, which a
/// trigger's `resource` may be written with.
const CORE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

/// What a change did to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
        }
    }
}

/// One trigger of a topic.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The resource type it watches.
    pub resource: String,
    /// The interactions it fires on (all three when the topic lists none).
    pub interactions: Vec<Interaction>,
    /// The criterion the change must meet, compiled.
    pub criteria: Option<Expr>,
}

/// A checked topic.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    /// `status` absent or `active`: the topic publishes. A `draft`,
    /// `retired` or `unknown` topic publishes nothing.
    pub live: bool,
    pub triggers: Vec<Trigger>,
}

impl Topic {
    /// Reads a stored (or about-to-be-stored) topic; the error says what to
    /// fix, naming the element.
    pub fn parse(body: &Value) -> Result<Topic, String> {
        let Some(fields) = body.as_object() else {
            return Err("must be a JSON object".into());
        };
        let url =
            match fields.get("url") {
                Some(Value::String(url)) if !url.trim().is_empty() => url.clone(),
                _ => return Err(
                    "url is required: the topic's canonical URL, which destinations name in topic"
                        .into(),
                ),
            };
        let live = match fields.get("status").and_then(Value::as_str) {
            None | Some("active") => true,
            Some("draft" | "retired" | "unknown") => false,
            Some(_) => return Err("status must be draft, active, retired or unknown".into()),
        };
        let list = match fields.get("trigger") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            _ => {
                return Err(
                    "trigger is required: at least one {resource, supportedInteraction, fhirPathCriteria}"
                        .into(),
                )
            }
        };
        let mut triggers = Vec::with_capacity(list.len());
        for (i, trigger) in list.iter().enumerate() {
            triggers.push(parse_trigger(trigger).map_err(|e| format!("trigger[{i}].{e}"))?);
        }
        Ok(Topic {
            url,
            live,
            triggers,
        })
    }

    /// Whether a change fires this topic: a live topic with a trigger for
    /// the resource type and interaction whose criterion is true.
    /// `current` is the stored body (`None` for a deletion), `previous` the
    /// version before (`None` for a creation).
    pub fn fires(
        &self,
        resource_type: &str,
        interaction: Interaction,
        current: Option<&Value>,
        previous: Option<&Value>,
    ) -> bool {
        self.live
            && self.triggers.iter().any(|t| {
                t.resource == resource_type
                    && t.interactions.contains(&interaction)
                    && t.criteria.as_ref().is_none_or(|c| {
                        c.test(current, &[("current", current), ("previous", previous)])
                            == Some(true)
                    })
            })
    }
}

fn parse_trigger(trigger: &Value) -> Result<Trigger, String> {
    let Some(fields) = trigger.as_object() else {
        return Err("must be an object".into());
    };
    let resource = match fields.get("resource").and_then(Value::as_str) {
        Some(r) => r.strip_prefix(CORE_PREFIX).unwrap_or(r),
        None => return Err("resource is required: a resource type such as Patient".into()),
    };
    if !fhirbox_fhir::resource_types::RESOURCE_TYPES.contains(&resource) {
        return Err(if fhirbox_fhir::is_known_resource_type(resource) {
            format!(
                "resource {resource} is one of fhirbox's own types, which topics do not publish"
            )
        } else {
            let mut shown: String = resource.chars().take(64).collect();
            if shown.len() < resource.len() {
                shown.push('…');
            }
            format!("resource {shown:?} is not a FHIR R4 resource type")
        });
    }
    let interactions = match fields.get("supportedInteraction") {
        None => vec![
            Interaction::Create,
            Interaction::Update,
            Interaction::Delete,
        ],
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut out = Vec::new();
            for value in list {
                let interaction = match value.as_str() {
                    Some("create") => Interaction::Create,
                    Some("update") => Interaction::Update,
                    Some("delete") => Interaction::Delete,
                    _ => return Err("supportedInteraction takes create, update and delete".into()),
                };
                if !out.contains(&interaction) {
                    out.push(interaction);
                }
            }
            out
        }
        Some(_) => return Err(
            "supportedInteraction must list create, update or delete (leave it out for all three)"
                .into(),
        ),
    };
    let criteria = match fields.get("fhirPathCriteria") {
        None => None,
        Some(Value::String(text)) if text.chars().count() > MAX_CRITERIA_LEN => {
            return Err(format!(
                "fhirPathCriteria is longer than {MAX_CRITERIA_LEN} characters"
            ))
        }
        Some(Value::String(text)) if !text.trim().is_empty() => Some(
            compile_with(text, VARIABLES)
                .map_err(|why| format!("fhirPathCriteria cannot be used: {why}. Supported: paths from %current or %previous, = != < > <= >=, and, or, exists(), empty(), not(), where(), first(), string, number, boolean and @date literals"))?,
        ),
        Some(_) => return Err("fhirPathCriteria must be a FHIRPath expression (a string)".into()),
    };
    Ok(Trigger {
        resource: resource.to_owned(),
        interactions,
        criteria,
    })
}

/// The write rule of `AidboxSubscriptionTopic` (rest's finalizer).
pub fn finalize(body: Value) -> Result<Value, fhirbox_store::Refusal> {
    Topic::parse(&body).map_err(|e| {
        fhirbox_store::Refusal::invalid(format!("AidboxSubscriptionTopic: {e}"))
            .at("AidboxSubscriptionTopic")
    })?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn topic(trigger: Value) -> Result<Topic, String> {
        Topic::parse(&json!({"resourceType": "AidboxSubscriptionTopic",
            "url": "http://example.org/topics/encounters", "trigger": [trigger]}))
    }

    #[test]
    fn triggers_fire_on_their_type_interactions_and_criteria() {
        let t = topic(json!({"resource": "Encounter", "supportedInteraction": ["create", "update"],
            "fhirPathCriteria": "%current.status = 'finished' and (%previous.empty() or %previous.status != 'finished')"}))
        .unwrap();
        let done = json!({"resourceType": "Encounter", "status": "finished"});
        let open = json!({"resourceType": "Encounter", "status": "in-progress"});
        assert!(t.fires("Encounter", Interaction::Create, Some(&done), None));
        assert!(t.fires("Encounter", Interaction::Update, Some(&done), Some(&open)));
        assert!(!t.fires("Encounter", Interaction::Update, Some(&done), Some(&done)));
        assert!(!t.fires("Encounter", Interaction::Update, Some(&open), Some(&done)));
        assert!(!t.fires("Encounter", Interaction::Delete, None, Some(&done)));
        assert!(!t.fires("Patient", Interaction::Create, Some(&done), None));
        // Canonical type URLs, and no criterion: every change of the type.
        let all =
            topic(json!({"resource": "http://hl7.org/fhir/StructureDefinition/Patient"})).unwrap();
        assert!(all.fires("Patient", Interaction::Delete, None, Some(&json!({}))));
        // A draft topic publishes nothing.
        let mut draft = all.clone();
        draft.live = false;
        assert!(!draft.fires("Patient", Interaction::Create, Some(&json!({})), None));
    }

    #[test]
    fn bad_topics_say_what_to_fix() {
        for (trigger, says) in [
            (
                json!({"resource": "Patinet"}),
                "trigger[0].resource \"Patinet\" is not a FHIR R4 resource type",
            ),
            (json!({"resource": "Client"}), "fhirbox's own types"),
            (json!({}), "resource is required"),
            (
                json!({"resource": "Patient", "supportedInteraction": ["read"]}),
                "create, update and delete",
            ),
            (
                json!({"resource": "Patient", "supportedInteraction": []}),
                "leave it out",
            ),
            (
                json!({"resource": "Patient", "fhirPathCriteria": "%current.name.count() > 1"}),
                "the function count()",
            ),
            (
                json!({"resource": "Patient", "fhirPathCriteria": "%previous.active implies true"}),
                "Supported:",
            ),
            (
                json!({"resource": "Patient", "fhirPathCriteria": "x".repeat(3000)}),
                "longer than",
            ),
            (
                json!({"resource": "Patient", "fhirPathCriteria": 1}),
                "a string",
            ),
        ] {
            let e = topic(trigger.clone()).unwrap_err();
            assert!(e.contains(says), "{trigger}: {e}");
        }
        let e = Topic::parse(&json!({"trigger": [{"resource": "Patient"}]})).unwrap_err();
        assert!(e.starts_with("url is required"), "{e}");
        let e = Topic::parse(&json!({"url": "u"})).unwrap_err();
        assert!(e.starts_with("trigger is required"), "{e}");
        let e = Topic::parse(
            &json!({"url": "u", "status": "on", "trigger": [{"resource": "Patient"}]}),
        )
        .unwrap_err();
        assert!(e.contains("status"), "{e}");
    }
}
