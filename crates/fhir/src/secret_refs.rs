//! Where secret references sit in a resource body, and whether the place is
//! one of the secret-capable fields (docs/external-secrets.md, "The
//! secret-capable fields"): the JSON side of the extension pattern, shared by
//! the write rules and anything else that reads references.

use serde_json::Value;

use crate::secret_fields::{
    fields_of, FieldLocation, SecretField, DATA_ABSENT_REASON_URL, SECRET_FIELDS,
    SECRET_REFERENCE_URL,
};

/// A segment of a JSON location.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn display_path(resource_type: &str, path: &[Seg]) -> String {
    let mut out = resource_type.to_owned();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k.strip_prefix('_').unwrap_or(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Every element (object) whose `extension` list holds a secret reference.
pub fn find_references(value: &Value, path: &mut Vec<Seg>, found: &mut Vec<Vec<Seg>>) {
    match value {
        Value::Object(fields) => {
            let has_reference = fields
                .get("extension")
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .any(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_REFERENCE_URL))
                });
            if has_reference {
                found.push(path.clone());
            }
            for (k, v) in fields {
                path.push(Seg::Key(k.clone()));
                find_references(v, path, found);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                find_references(v, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The secret-capable field an element path belongs to, if any.
pub fn field_at(body: &Value, resource_type: &str, path: &[Seg]) -> Option<&'static SecretField> {
    fields_of(resource_type).find(|field| match field.location {
        FieldLocation::Path(keys) => {
            path.len() == keys.len()
                && keys.iter().zip(path).enumerate().all(|(i, (key, seg))| {
                    let expected = if i + 1 == keys.len() {
                        format!("_{key}")
                    } else {
                        (*key).to_owned()
                    };
                    *seg == Seg::Key(expected)
                })
        }
        FieldLocation::ArrayItem { array, field: name } => {
            path.len() == array.len() + 2
                && array
                    .iter()
                    .zip(path)
                    .all(|(key, seg)| *seg == Seg::Key((*key).to_owned()))
                && matches!(path[array.len()], Seg::Index(_))
                && path[array.len() + 1] == Seg::Key(format!("_{name}"))
        }
        FieldLocation::NamedParameter { name } => match path {
            [Seg::Key(p), Seg::Index(i), Seg::Key(v)]
                if p == "parameter" && v == "_valueString" =>
            {
                body.get("parameter")
                    .and_then(|params| params.get(*i))
                    .and_then(|param| param.get("name"))
                    .and_then(Value::as_str)
                    == Some(name)
            }
            _ => false,
        },
    })
}

pub fn value_at<'a>(body: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(body, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(*i),
    })
}

pub fn all_fields_text() -> String {
    SECRET_FIELDS
        .iter()
        .map(|f| format!("{}.{}", f.resource_type, f.display))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `extension` list of a primitive's `_field` element (empty when absent).
pub fn extensions(element: Option<&Value>) -> &[Value] {
    element
        .and_then(|e| e.get("extension"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The vault secret name a `_field` element refers to, if any.
pub fn referenced_name(element: Option<&Value>) -> Option<&str> {
    extensions(element)
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_REFERENCE_URL))
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
}

/// True when the element says the value is masked (data-absent-reason
/// `masked`, FHIR R4 extension-data-absent-reason).
pub fn is_masked(element: Option<&Value>) -> bool {
    extensions(element).iter().any(|e| {
        e.get("url").and_then(Value::as_str) == Some(DATA_ABSENT_REASON_URL)
            && e.get("valueCode").and_then(Value::as_str) == Some("masked")
    })
}
