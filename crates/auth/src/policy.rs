//! AccessPolicy resources (Aidbox shapes): engines `allow` and `matcho`,
//! links to clients, and the matcho pattern language (literal values, nested
//! objects, arrays, `$enum`, `#regex` strings, `present?`, `nil?`).

use regex::Regex;
use serde_json::Value;

/// A compiled matcho pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    Literal(Value),
    Regex(Regex),
    Enum(Vec<Value>),
    Present,
    Nil,
    Object(Vec<(String, Pattern)>),
    Array(Vec<Pattern>),
}

impl Pattern {
    /// Compiles a pattern; errors name the JSON location.
    pub fn compile(value: &Value, at: &str) -> Result<Pattern, String> {
        Ok(match value {
            Value::String(s) if s.starts_with('#') => Pattern::Regex(
                Regex::new(&s[1..])
                    .map_err(|e| format!("{at}: {s:?} is not a valid regular expression: {e}"))?,
            ),
            Value::String(s) if s == "present?" => Pattern::Present,
            Value::String(s) if s == "nil?" => Pattern::Nil,
            Value::Object(fields) if fields.contains_key("$enum") => {
                if fields.len() != 1 {
                    return Err(format!("{at}: $enum must be the only key of its object"));
                }
                match &fields["$enum"] {
                    Value::Array(options) if !options.is_empty() => Pattern::Enum(options.clone()),
                    _ => return Err(format!("{at}.$enum must be a non-empty array of values")),
                }
            }
            Value::Object(fields) => {
                let mut compiled = Vec::with_capacity(fields.len());
                for (key, v) in fields {
                    if key.starts_with('$') {
                        return Err(format!("{at}: the operator {key:?} is not supported; use $enum, #regex, present? or nil?"));
                    }
                    compiled.push((key.clone(), Pattern::compile(v, &format!("{at}.{key}"))?));
                }
                Pattern::Object(compiled)
            }
            Value::Array(items) => Pattern::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Pattern::compile(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            other => Pattern::Literal(other.clone()),
        })
    }

    /// True when `value` (absent = `None`) matches.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        let value = value.filter(|v| !v.is_null());
        match self {
            Pattern::Nil => value.is_none(),
            Pattern::Present => value.is_some(),
            Pattern::Literal(l) => value == Some(l),
            Pattern::Enum(options) => value.is_some_and(|v| options.contains(v)),
            Pattern::Regex(re) => value
                .and_then(Value::as_str)
                .is_some_and(|s| re.is_match(s)),
            Pattern::Object(fields) => match value {
                Some(Value::Object(actual)) => fields.iter().all(|(k, p)| p.matches(actual.get(k))),
                _ => false,
            },
            Pattern::Array(items) => match value {
                Some(Value::Array(actual)) => items
                    .iter()
                    .enumerate()
                    .all(|(i, p)| p.matches(actual.get(i))),
                _ => false,
            },
        }
    }
}

/// How a policy decides.
#[derive(Debug, Clone)]
pub enum Engine {
    Allow,
    Matcho(Pattern),
}

/// A compiled AccessPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub id: String,
    pub engine: Engine,
    /// Client ids this policy is linked to.
    pub clients: Vec<String>,
    /// TokenIntrospector ids whose tokens this policy is linked to
    /// (docs/tokens.md); with no links at all a policy applies to every request.
    pub introspectors: Vec<String>,
    /// User ids: the policy applies to these users' requests, through any
    /// application (docs/sign-in.md).
    pub users: Vec<String>,
    /// Links to other subjects (Operation): the policy is linked but not to clients.
    pub linked_elsewhere: bool,
}

impl Policy {
    /// Parses and checks an AccessPolicy body.
    pub fn parse(body: &Value) -> Result<Policy, String> {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let engine = match body.get("engine").and_then(Value::as_str) {
            Some("allow") => Engine::Allow,
            Some("matcho") => {
                let pattern = body
                    .get("matcho")
                    .ok_or("engine \"matcho\" needs a \"matcho\" pattern object")?;
                if !pattern.is_object() {
                    return Err("matcho must be a JSON object pattern".into());
                }
                Engine::Matcho(Pattern::compile(pattern, "matcho")?)
            }
            Some(other) => {
                return Err(format!(
                    "engine {other:?} is not supported; use \"allow\" or \"matcho\""
                ))
            }
            None => return Err("engine is missing; use \"allow\" or \"matcho\"".into()),
        };
        let mut clients = Vec::new();
        let mut introspectors = Vec::new();
        let mut users = Vec::new();
        let mut linked_elsewhere = false;
        match body.get("link") {
            None => {}
            Some(Value::Array(links)) => {
                for (i, link) in links.iter().enumerate() {
                    let (rtype, rid) = if let Some(reference) =
                        link.get("reference").and_then(Value::as_str)
                    {
                        reference.split_once('/').ok_or_else(|| {
                            format!("link[{i}].reference {reference:?} must look like Client/<id>")
                        })?
                    } else {
                        match (
                            link.get("resourceType").and_then(Value::as_str),
                            link.get("id").and_then(Value::as_str),
                        ) {
                            (Some(t), Some(id)) => (t, id),
                            _ => {
                                return Err(format!(
                                    "link[{i}] must be {{\"reference\": \"Client/<id>\"}} or {{\"resourceType\": \"Client\", \"id\": \"<id>\"}}"
                                ))
                            }
                        }
                    };
                    match rtype {
                        "Client" => clients.push(rid.to_owned()),
                        "TokenIntrospector" => introspectors.push(rid.to_owned()),
                        "User" => users.push(rid.to_owned()),
                        "Operation" => linked_elsewhere = true,
                        other => return Err(format!("link[{i}] names {other:?}; a policy links to Client, TokenIntrospector, User or Operation")),
                    }
                }
            }
            Some(_) => return Err("link must be an array".into()),
        }
        Ok(Policy {
            id,
            engine,
            clients,
            introspectors,
            users,
            linked_elsewhere,
        })
    }

    fn unlinked(&self) -> bool {
        self.clients.is_empty()
            && self.introspectors.is_empty()
            && self.users.is_empty()
            && !self.linked_elsewhere
    }

    /// True when the policy is evaluated for requests of `client_id`.
    pub fn applies_to(&self, client_id: &str) -> bool {
        self.unlinked() || self.clients.iter().any(|c| c == client_id)
    }

    /// True when the policy is evaluated for `user` signed in through the
    /// application `client_id`: linked to either, or to nothing.
    pub fn applies_to_user(&self, client_id: &str, user: &str) -> bool {
        self.applies_to(client_id) || self.users.iter().any(|u| u == user)
    }

    /// True when the policy is evaluated for tokens accepted by the
    /// TokenIntrospector `introspector`. Client links never apply to them:
    /// another issuer's token cannot take a client's policies by naming it.
    pub fn applies_to_introspector(&self, introspector: &str) -> bool {
        self.unlinked() || self.introspectors.iter().any(|t| t == introspector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pattern(v: Value) -> Pattern {
        Pattern::compile(&v, "matcho").unwrap()
    }

    #[test]
    fn matcho_matches_literals_nested_objects_enums_and_regexes() {
        let p = pattern(json!({
            "request-method": {"$enum": ["get", "head"]},
            "uri": "#^/fhir/Patient",
            "params": {"resource/type": "Patient"},
            "client": {"id": "present?"},
            "body": "nil?"
        }));
        let ok = json!({"request-method": "get", "uri": "/fhir/Patient/1", "params": {"resource/type": "Patient", "x": 1}, "client": {"id": "c"}});
        assert!(p.matches(Some(&ok)));
        let mut post = ok.clone();
        post["request-method"] = json!("post");
        assert!(!p.matches(Some(&post)));
        let mut other = ok.clone();
        other["uri"] = json!("/fhir/Observation");
        assert!(!p.matches(Some(&other)));
        let mut no_client = ok.clone();
        no_client["client"] = json!({});
        assert!(!p.matches(Some(&no_client)));
        let mut with_body = ok;
        with_body["body"] = json!({});
        assert!(!p.matches(Some(&with_body)));
        assert!(pattern(json!([1, "#a"])).matches(Some(&json!([1, "cat", 3]))));
        assert!(!pattern(json!([1, 2])).matches(Some(&json!([1]))));
    }

    #[test]
    fn parse_checks_engine_pattern_and_links() {
        assert!(Policy::parse(&json!({"engine": "allow"})).is_ok());
        assert!(Policy::parse(&json!({"engine": "sql"}))
            .unwrap_err()
            .contains("not supported"));
        assert!(Policy::parse(&json!({}))
            .unwrap_err()
            .contains("engine is missing"));
        assert!(Policy::parse(&json!({"engine": "matcho"})).is_err());
        assert!(
            Policy::parse(&json!({"engine": "matcho", "matcho": {"uri": "#("}}))
                .unwrap_err()
                .contains("matcho.uri")
        );
        assert!(
            Policy::parse(&json!({"engine": "matcho", "matcho": {"x": {"$gt": 1}}}))
                .unwrap_err()
                .contains("$gt")
        );
        let p = Policy::parse(&json!({"engine": "allow", "link": [{"reference": "Client/a"}, {"resourceType": "Client", "id": "b"}]})).unwrap();
        assert_eq!(p.clients, ["a", "b"]);
        assert!(p.applies_to("b") && !p.applies_to("c"));
        assert!(Policy::parse(&json!({"engine": "allow"}))
            .unwrap()
            .applies_to("anyone"));
        let user_only =
            Policy::parse(&json!({"engine": "allow", "link": [{"reference": "User/u"}]})).unwrap();
        assert!(!user_only.applies_to("anyone"));
        assert!(user_only.applies_to_user("any-app", "u"));
        assert!(!user_only.applies_to_user("any-app", "v"));
        assert!(
            p.applies_to_user("a", "v"),
            "a client link serves its users too"
        );
        assert!(
            Policy::parse(&json!({"engine": "allow", "link": [{"reference": "Patient/x"}]}))
                .is_err()
        );
        assert!(Policy::parse(&json!({"engine": "allow", "link": "Client/a"})).is_err());
        let tokens = Policy::parse(
            &json!({"engine": "allow", "link": [{"reference": "TokenIntrospector/kc"}]}),
        )
        .unwrap();
        assert!(tokens.applies_to_introspector("kc") && !tokens.applies_to_introspector("other"));
        assert!(
            !tokens.applies_to("kc"),
            "an introspector link is no client link"
        );
        assert!(
            !p.applies_to_introspector("a"),
            "a client link is no introspector link"
        );
        assert!(Policy::parse(&json!({"engine": "allow"}))
            .unwrap()
            .applies_to_introspector("kc"));
    }
}
