//! FHIRPath Patch (R4, "FHIRPath Patch" page of the specification): a
//! `Parameters` resource whose `operation` parameters add, insert, delete,
//! replace or move elements found by a FHIRPath expression. The paths this
//! server takes are the navigation subset patches use: the resource type,
//! then member names (a choice element by its base name, `deceased`),
//! `[n]`, `first()`, `last()` and `where(a = 'x' and b.c = 'y')`. Anything
//! else is refused with a message that names it.

use serde_json::{Map, Value};

/// Most operations one patch may carry, as many as a JSON Patch may.
pub const MAX_OPERATIONS: usize = 1000;

/// One operation of a FHIRPath Patch.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Add {
        path: Path,
        name: String,
        value: Typed,
    },
    Insert {
        path: Path,
        index: usize,
        value: Typed,
    },
    Delete {
        path: Path,
    },
    Replace {
        path: Path,
        value: Typed,
    },
    Move {
        path: Path,
        source: usize,
        destination: usize,
    },
}

/// A value to write, with the type its `value[x]` named (`Boolean` for
/// `valueBoolean`; `None` for a value given as parts).
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    pub value: Value,
    pub type_suffix: Option<String>,
}

/// A parsed path: the resource type it starts from, then its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    resource_type: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Member(String),
    Index(usize),
    First,
    Last,
    /// Every condition holds: the relative path has a value equal to the literal.
    Where(Vec<(Vec<String>, Value)>),
}

/// One position in a resource: member names and array positions.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    At(usize),
}

type Loc = Vec<Seg>;

/// Reads a `Parameters` body into operations; a 400 message when it is not
/// a FHIRPath Patch this server can apply.
pub fn parse(body: &Value) -> Result<Vec<Operation>, String> {
    let parameters = body.get("parameter").and_then(Value::as_array).ok_or(
        "a FHIRPath Patch is a Parameters resource with one \"operation\" parameter per change",
    )?;
    if parameters.is_empty() {
        return Err("the FHIRPath Patch has no operation".into());
    }
    if parameters.len() > MAX_OPERATIONS {
        return Err(format!(
            "the FHIRPath Patch has {} operations; at most {MAX_OPERATIONS} are accepted",
            parameters.len()
        ));
    }
    parameters
        .iter()
        .enumerate()
        .map(|(i, p)| operation(p).map_err(|e| format!("Parameters.parameter[{i}]: {e}")))
        .collect()
}

fn operation(parameter: &Value) -> Result<Operation, String> {
    if parameter.get("name").and_then(Value::as_str) != Some("operation") {
        return Err("every parameter of a FHIRPath Patch is named \"operation\"".into());
    }
    let parts = parameter.get("part").and_then(Value::as_array).ok_or(
        "an operation has parts: type, path and, by type, name, value, index, source, destination",
    )?;
    let part = |name: &str| parts.iter().find(|p| p["name"] == name);
    let text = |name: &str| -> Result<&str, String> {
        let p = part(name).ok_or_else(|| format!("the operation has no {name:?} part"))?;
        p.get("valueString")
            .or_else(|| p.get("valueCode"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the {name:?} part needs a valueString"))
    };
    let integer = |name: &str| -> Result<usize, String> {
        let p = part(name).ok_or_else(|| format!("the operation has no {name:?} part"))?;
        p.get("valueInteger")
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("the {name:?} part needs a valueInteger of 0 or more"))
    };
    let value = || -> Result<Typed, String> {
        let p = part("value").ok_or("the operation has no \"value\" part")?;
        typed(p)
    };
    let kind = text("type")?;
    let path = parse_path(text("path")?)?;
    Ok(match kind {
        "add" => Operation::Add {
            path,
            name: text("name")?.to_owned(),
            value: value()?,
        },
        "insert" => Operation::Insert {
            path,
            index: integer("index")?,
            value: value()?,
        },
        "delete" => Operation::Delete { path },
        "replace" => Operation::Replace {
            path,
            value: value()?,
        },
        "move" => Operation::Move {
            path,
            source: integer("source")?,
            destination: integer("destination")?,
        },
        other => {
            return Err(format!(
                "operation type {other:?} is not one of add, insert, delete, replace, move"
            ))
        }
    })
}

/// A `value` part: `value[x]`, or parts that make an element (a backbone
/// element has no type of its own to name).
fn typed(part: &Value) -> Result<Typed, String> {
    let fields = part.as_object().ok_or("a part is an object")?;
    if let Some((key, value)) = fields.iter().find(|(k, _)| k.starts_with("value")) {
        return Ok(Typed {
            value: value.clone(),
            type_suffix: Some(key["value".len()..].to_owned()),
        });
    }
    if let Some(parts) = fields.get("part").and_then(Value::as_array) {
        let mut element = Map::new();
        for p in parts {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or("each part of a value has a name")?;
            let inner = typed(p)?;
            let key = match (&inner.type_suffix, name.strip_suffix("[x]")) {
                (Some(t), Some(base)) => format!("{base}{t}"),
                _ => name.to_owned(),
            };
            element.insert(key, inner.value);
        }
        return Ok(Typed {
            value: Value::Object(element),
            type_suffix: None,
        });
    }
    Err("the value part needs a value[x] or parts".into())
}

/// Parses the navigation subset of FHIRPath patches use.
pub fn parse_path(text: &str) -> Result<Path, String> {
    let bad = |why: &str| format!("path {text:?}: {why}");
    let mut rest = text.trim();
    let head_len = rest.find(['.', '[']).unwrap_or(rest.len());
    let resource_type = rest[..head_len].to_owned();
    if resource_type.is_empty() || !resource_type.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad(
            "it must start with the resource type, as in Patient.name",
        ));
    }
    rest = &rest[head_len..];
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or_else(|| bad("a [ is not closed"))?;
            let n = after[..end]
                .trim()
                .parse::<usize>()
                .map_err(|_| bad("an index is a whole number, as in name[0]"))?;
            steps.push(Step::Index(n));
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('.') {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            if name.is_empty() {
                return Err(bad("a . must be followed by a name"));
            }
            rest = &after[len..];
            if let Some(args) = rest.strip_prefix('(') {
                let end = closing(args).ok_or_else(|| bad("a ( is not closed"))?;
                let inner = &args[..end];
                rest = &args[end + 1..];
                steps.push(match (name, inner.trim()) {
                    ("first", "") => Step::First,
                    ("last", "") => Step::Last,
                    ("where", cond) => Step::Where(conditions(cond).map_err(|e| bad(&e))?),
                    (f, _) => {
                        return Err(bad(&format!(
                            "the function {f}() is not supported in a patch path; use names, [n], first(), last() and where(name = 'value')"
                        )))
                    }
                });
            } else {
                steps.push(Step::Member(name.to_owned()));
            }
        } else {
            return Err(bad("expected .name, [n] or .where(…)"));
        }
    }
    Ok(Path {
        text: text.to_owned(),
        resource_type,
        steps,
    })
}

/// The position of the `)` that closes an argument list (quotes skipped).
fn closing(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth == 0 => return Some(i),
            ')' if !quoted => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `a = 'x' and b.c = 'y'`: relative paths equal to literals.
fn conditions(text: &str) -> Result<Vec<(Vec<String>, Value)>, String> {
    let mut out = Vec::new();
    for clause in split_and(text) {
        let (left, right) = clause
            .split_once('=')
            .ok_or("where() takes name = 'value' conditions joined by and")?;
        let names: Vec<String> = left.trim().split('.').map(str::to_owned).collect();
        if names
            .iter()
            .any(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!("{:?} is not a path of names", left.trim()));
        }
        out.push((names, literal(right.trim())?));
    }
    Ok(out)
}

/// Splits on ` and ` outside quotes.
fn split_and(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '\'' => quoted = !quoted,
            ' ' if !quoted && i >= start && text[i..].starts_with(" and ") => {
                parts.push(&text[start..i]);
                start = i + " and ".len();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn literal(text: &str) -> Result<Value, String> {
    if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Ok(Value::String(
            inner.replace("\\'", "'").replace("\\\\", "\\"),
        ));
    }
    match text {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => serde_json::from_str::<serde_json::Number>(text)
            .map(Value::Number)
            .map_err(|_| format!("{text:?} is not a literal: quote strings, as in 'official'")),
    }
}

fn get<'a>(root: &'a Value, loc: &[Seg]) -> Option<&'a Value> {
    loc.iter().try_fold(root, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::At(i) => v.get(*i),
    })
}

fn get_mut<'a>(root: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Value> {
    loc.iter().try_fold(root, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k),
        Seg::At(i) => v.get_mut(*i),
    })
}

/// The key of `object` that holds member `name`: the name itself, or a
/// choice element's typed name (`deceasedBoolean` for `deceased`).
fn member_key(object: &Map<String, Value>, name: &str) -> Option<String> {
    if object.contains_key(name) {
        return Some(name.to_owned());
    }
    object
        .keys()
        .find(|k| {
            k.strip_prefix(name)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase())
        })
        .cloned()
}

/// Steps from `locs` into member `name`, flattening arrays.
fn members(root: &Value, locs: Vec<Loc>, name: &str) -> Vec<Loc> {
    let mut out = Vec::new();
    for loc in locs {
        let Some(Value::Object(object)) = get(root, &loc) else {
            continue;
        };
        let Some(key) = member_key(object, name) else {
            continue;
        };
        let mut at = loc.clone();
        at.push(Seg::Key(key.clone()));
        match &object[&key] {
            Value::Array(items) => out.extend((0..items.len()).map(|i| {
                let mut item = at.clone();
                item.push(Seg::At(i));
                item
            })),
            _ => out.push(at),
        }
    }
    out
}

/// The values a relative path of names reaches from `value`.
fn values_at<'a>(value: &'a Value, names: &[String]) -> Vec<&'a Value> {
    let mut current = vec![value];
    for name in names {
        let mut next = Vec::new();
        for v in current {
            let Value::Object(object) = v else { continue };
            let Some(key) = member_key(object, name) else {
                continue;
            };
            match &object[&key] {
                Value::Array(items) => next.extend(items.iter()),
                other => next.push(other),
            }
        }
        current = next;
    }
    current
}

impl Path {
    /// The positions the path selects in `root`.
    fn eval(&self, root: &Value) -> Result<Vec<Loc>, String> {
        if root.get("resourceType").and_then(Value::as_str) != Some(self.resource_type.as_str()) {
            return Err(format!(
                "path {:?} starts from {}, which this resource is not",
                self.text, self.resource_type
            ));
        }
        let mut locs: Vec<Loc> = vec![Vec::new()];
        for step in &self.steps {
            locs = match step {
                Step::Member(name) => members(root, locs, name),
                Step::Index(n) => locs.into_iter().nth(*n).into_iter().collect(),
                Step::First => locs.into_iter().next().into_iter().collect(),
                Step::Last => locs.into_iter().last().into_iter().collect(),
                Step::Where(conditions) => locs
                    .into_iter()
                    .filter(|loc| {
                        get(root, loc).is_some_and(|v| {
                            conditions
                                .iter()
                                .all(|(names, lit)| values_at(v, names).contains(&lit))
                        })
                    })
                    .collect(),
            };
        }
        Ok(locs)
    }

    /// The one position the path selects; an error naming the path when it
    /// selects none or several.
    fn single(&self, root: &Value) -> Result<Loc, String> {
        let mut locs = self.eval(root)?;
        match locs.len() {
            1 => Ok(locs.remove(0)),
            0 => Err(format!(
                "path {:?} selects nothing in the resource",
                self.text
            )),
            n => Err(format!(
                "path {:?} selects {n} elements; the operation needs exactly one",
                self.text
            )),
        }
    }

    /// For insert and move: the array the path names (its last step is a
    /// member name) and where it sits.
    fn list(&self, root: &Value) -> Result<(Loc, String), String> {
        let Some((Step::Member(name), parent_steps)) = self.steps.split_last() else {
            return Err(format!(
                "path {:?} must end with the name of a list, as in Patient.identifier",
                self.text
            ));
        };
        let parent = Path {
            text: self.text.clone(),
            resource_type: self.resource_type.clone(),
            steps: parent_steps.to_vec(),
        }
        .single(root)
        .map_err(|e| format!("{e} (the element that holds the list)"))?;
        Ok((parent, name.clone()))
    }
}

/// The property names from the root to `loc` (positions left out): what
/// the schema knows an element by.
fn keys(loc: &[Seg]) -> Vec<&str> {
    loc.iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::At(_) => None,
        })
        .collect()
}

/// Applies `ops` to `doc` in order; the first that cannot apply stops the
/// patch with a message that names it (nothing is stored then).
pub fn apply(doc: &mut Value, ops: &[Operation]) -> Result<(), String> {
    let resource_type = doc
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for (i, op) in ops.iter().enumerate() {
        apply_one(doc, &resource_type, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    Ok(())
}

fn apply_one(doc: &mut Value, resource_type: &str, op: &Operation) -> Result<(), String> {
    match op {
        Operation::Add { path, name, value } => {
            let parent = path.single(doc)?;
            let mut at = keys(&parent);
            // A choice element is added by its base name and the value's type.
            let mut key = name.clone();
            at.push(&key);
            let mut repeats = crate_repeats(resource_type, &at);
            if repeats.is_none() {
                if let Some(t) = &value.type_suffix {
                    let typed_key = format!("{name}{t}");
                    at.pop();
                    at.push(&typed_key);
                    repeats = crate_repeats(resource_type, &at);
                    if repeats.is_some() {
                        key = typed_key.clone();
                    }
                }
            }
            let repeats = repeats.ok_or_else(|| {
                format!(
                    "{resource_type} has no element {name:?} at path {:?}",
                    path.text
                )
            })?;
            let Some(Value::Object(object)) = get_mut(doc, &parent) else {
                return Err(format!(
                    "path {:?} does not select an element with children",
                    path.text
                ));
            };
            match (repeats, object.get_mut(&key)) {
                (true, Some(Value::Array(items))) => items.push(value.value.clone()),
                (true, None) => {
                    object.insert(key, Value::Array(vec![value.value.clone()]));
                }
                (false, None) => {
                    object.insert(key, value.value.clone());
                }
                (false, Some(_)) => {
                    return Err(format!("{name} is already there; use replace to change it"))
                }
                (true, Some(_)) => return Err(format!("{name} is not a list in the resource")),
            }
        }
        Operation::Insert { path, index, value } => {
            let (parent, name) = path.list(doc)?;
            let mut at = keys(&parent);
            at.push(&name);
            if crate_repeats(resource_type, &at) != Some(true) {
                return Err(format!("path {:?} is not a list", path.text));
            }
            let Some(Value::Object(object)) = get_mut(doc, &parent) else {
                return Err(format!("path {:?} is not inside an element", path.text));
            };
            let items = object
                .entry(name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = items else {
                return Err(format!("{name} is not a list in the resource"));
            };
            if *index > items.len() {
                items.is_empty().then(|| object.remove(&name));
                return Err(format!(
                    "index {index} is past the end of {name} ({} elements)",
                    object
                        .get(&name)
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                ));
            }
            items.insert(*index, value.value.clone());
        }
        Operation::Delete { path } => {
            let mut locs = path.eval(doc)?;
            if locs.len() > 1 {
                return Err(format!(
                    "path {:?} selects {} elements; delete takes one",
                    path.text,
                    locs.len()
                ));
            }
            // Nothing to delete is not an error (the element is deleted "if found").
            let Some(loc) = locs.pop() else { return Ok(()) };
            remove(doc, &loc)?;
        }
        Operation::Replace { path, value } => {
            let loc = path.single(doc)?;
            let Some((last, parent)) = loc.split_last() else {
                return Err("replace cannot replace the whole resource; use update".into());
            };
            // A choice element takes its key from the new value's type
            // (`deceasedBoolean` replaced by a valueDateTime becomes
            // `deceasedDateTime`).
            if let (Seg::Key(old), Some(t)) = (last, &value.type_suffix) {
                let parent_keys = keys(parent);
                if let Some(new_key) = choice_key(resource_type, &parent_keys, old, t) {
                    if let Some(Value::Object(object)) = get_mut(doc, parent) {
                        object.remove(old);
                        object.insert(new_key, value.value.clone());
                        return Ok(());
                    }
                }
            }
            let target = get_mut(doc, &loc)
                .ok_or_else(|| format!("path {:?} selects nothing", path.text))?;
            *target = value.value.clone();
        }
        Operation::Move {
            path,
            source,
            destination,
        } => {
            let (parent, name) = path.list(doc)?;
            let items = get_mut(doc, &parent)
                .and_then(|o| o.get_mut(&name))
                .and_then(Value::as_array_mut)
                .ok_or_else(|| format!("path {:?} is not a list in the resource", path.text))?;
            if *source >= items.len() || *destination >= items.len() {
                return Err(format!(
                    "move from {source} to {destination} is outside {name} ({} elements)",
                    items.len()
                ));
            }
            let item = items.remove(*source);
            items.insert(*destination, item);
        }
    }
    Ok(())
}

/// When `key` holds one type of a top-level choice element (`deceasedBoolean`
/// of `deceased[x]`) and the element takes type `t` under another key, that
/// key. Nested choices are replaced in place (validation then checks the
/// type), so a plain element is never moved to a look-alike.
fn choice_key(resource_type: &str, parent: &[&str], key: &str, t: &str) -> Option<String> {
    if !parent.is_empty() {
        return None;
    }
    let element = fhirbox_fhir::elements::elements(resource_type)?
        .iter()
        .find(|e| e.name.ends_with("[x]") && e.holds(key))?;
    let candidate = format!("{}{t}", element.name.strip_suffix("[x]")?);
    (candidate != key && crate_repeats(resource_type, &[candidate.as_str()]).is_some())
        .then_some(candidate)
}

fn crate_repeats(resource_type: &str, keys: &[&str]) -> Option<bool> {
    fhirbox_validation::elements::repeats(resource_type, keys)
}

/// Removes the element at `loc`, and an array it leaves empty (FHIR JSON
/// has no empty arrays).
fn remove(doc: &mut Value, loc: &[Seg]) -> Result<(), String> {
    let Some((last, parent)) = loc.split_last() else {
        return Err("delete cannot delete the whole resource; use DELETE".into());
    };
    let container = get_mut(doc, parent).ok_or("the element is not there")?;
    match (last, container) {
        (Seg::Key(k), Value::Object(object)) => {
            object.remove(k);
        }
        (Seg::At(i), Value::Array(items)) => {
            items.remove(*i);
            if items.is_empty() {
                return remove(doc, parent);
            }
        }
        _ => return Err("the element is not there".into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patched(doc: Value, ops: Vec<Value>) -> Result<Value, String> {
        let ops = parse(&json!({"resourceType": "Parameters", "parameter": ops}))?;
        let mut doc = doc;
        apply(&mut doc, &ops)?;
        Ok(doc)
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p",
               "name": [{"use": "official", "family": "Ng", "given": ["Ann"]},
                        {"use": "nickname", "given": ["Annie"]}],
               "identifier": [{"system": "a", "value": "1"}, {"system": "b", "value": "2"}],
               "deceasedBoolean": false})
    }

    #[test]
    fn add_insert_replace_delete_and_move() {
        let doc = patched(
            patient(),
            vec![
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                          {"name": "name", "valueString": "birthDate"}, {"name": "value", "valueDate": "1970-01-02"}])),
                op(json!([{"name": "type", "valueCode": "add"},
                          {"name": "path", "valueString": "Patient.name.where(use = 'official')"},
                          {"name": "name", "valueString": "given"}, {"name": "value", "valueString": "B"}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                          {"name": "name", "valueString": "telecom"},
                          {"name": "value", "valueContactPoint": {"system": "phone", "value": "555"}}])),
                op(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"},
                          {"name": "index", "valueInteger": 0},
                          {"name": "value", "valueIdentifier": {"system": "c", "value": "0"}}])),
                op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name[0].family"},
                          {"name": "value", "valueString": "Nguyen"}])),
                op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.deceased"},
                          {"name": "value", "valueDateTime": "2020-01-01"}])),
                op(json!([{"name": "type", "valueCode": "delete"},
                          {"name": "path", "valueString": "Patient.name.where(use = 'nickname')"}])),
                op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"}])),
                op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"},
                          {"name": "source", "valueInteger": 2}, {"name": "destination", "valueInteger": 0}])),
                op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                          {"name": "name", "valueString": "contact"},
                          {"name": "value", "part": [{"name": "name", "valueHumanName": {"family": "Kin"}},
                                                    {"name": "gender", "valueCode": "male"}]}])),
            ],
        )
        .unwrap();
        assert_eq!(doc["birthDate"], "1970-01-02");
        assert_eq!(
            doc["name"],
            json!([{"use": "official", "family": "Nguyen", "given": ["Ann", "B"]}])
        );
        assert_eq!(doc["telecom"], json!([{"system": "phone", "value": "555"}]));
        assert_eq!(
            doc["identifier"],
            json!([{"system": "b", "value": "2"}, {"system": "c", "value": "0"}, {"system": "a", "value": "1"}])
        );
        assert!(doc.get("deceasedBoolean").is_none());
        assert_eq!(doc["deceasedDateTime"], "2020-01-01");
        assert_eq!(
            doc["contact"],
            json!([{"name": {"family": "Kin"}, "gender": "male"}])
        );
    }

    #[test]
    fn only_a_choice_element_changes_its_key() {
        let task = json!({"resourceType": "Task", "status": "draft", "intent": "order",
                          "reasonCode": {"text": "why"}});
        let doc = patched(
            task,
            vec![op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Task.reasonCode"},
                           {"name": "value", "valueReference": {"reference": "Condition/c"}}]))],
        )
        .unwrap();
        assert_eq!(doc["reasonCode"], json!({"reference": "Condition/c"}));
        assert!(doc.get("reasonReference").is_none());
    }

    #[test]
    fn deleting_the_last_item_removes_the_list() {
        let doc = patched(
            json!({"resourceType": "Patient", "name": [{"family": "A"}]}),
            vec![op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name[0]"}]))],
        )
        .unwrap();
        assert_eq!(doc, json!({"resourceType": "Patient"}));
    }

    #[test]
    fn mistakes_are_named() {
        let one = |parts: Value| patched(patient(), vec![op(parts)]).unwrap_err();
        for (parts, needle) in [
            (
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name.given"},
                    {"name": "value", "valueString": "x"}]),
                "selects 2 elements",
            ),
            (
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.photo"},
                    {"name": "value", "valueString": "x"}]),
                "selects nothing",
            ),
            (
                json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "nope"}, {"name": "value", "valueString": "x"}]),
                "no element \"nope\"",
            ),
            (
                json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "deceased"}, {"name": "value", "valueBoolean": true}]),
                "already there",
            ),
            (
                json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"},
                    {"name": "index", "valueInteger": 9}, {"name": "value", "valueIdentifier": {}}]),
                "past the end",
            ),
            (
                json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"},
                    {"name": "source", "valueInteger": 5}, {"name": "destination", "valueInteger": 0}]),
                "outside",
            ),
            (
                json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.given"}]),
                "delete takes one",
            ),
            (
                json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.exists()"}]),
                "exists() is not supported",
            ),
            (
                json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Observation.code"}]),
                "starts from Observation",
            ),
            (
                json!([{"name": "type", "valueCode": "copy"}, {"name": "path", "valueString": "Patient"}]),
                "not one of add",
            ),
            (
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name[0].family"}]),
                "no \"value\" part",
            ),
        ] {
            let e = one(parts.clone());
            assert!(e.contains(needle), "{parts}: {e}");
        }
        // Deleting what is not there is not an error.
        assert!(patched(patient(), vec![op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.photo"}]))]).is_ok());
        assert!(parse(&json!({"resourceType": "Parameters"})).is_err());
    }

    #[test]
    fn paths_parse_the_patch_subset() {
        let p =
            parse_path("Patient.name.where(use = 'official' and period.start = '2020').given[1]")
                .unwrap();
        assert_eq!(p.steps.len(), 4);
        assert!(parse_path("name").is_ok(), "a bare type name");
        for bad in [
            "Patient..name",
            "Patient.name[x]",
            "Patient.name.where(use)",
            "Patient.name.where(use = official)",
            ".name",
            "Patient.name(",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        let quoted = parse_path(r"Patient.name.where(family = 'O\'Brien')").unwrap();
        assert_eq!(
            quoted.steps[1],
            Step::Where(vec![(vec!["family".into()], json!("O'Brien"))])
        );
    }
}
