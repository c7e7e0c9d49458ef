//! Structural validation of FHIR R4 resources and of fhirbox's own resource
//! types, from HL7's official R4 JSON Schema (`schema/fhir.schema.json`,
//! vendored; see `schema/README.md`) and a schema of the same form for the
//! server's types (`schema/fhirbox.schema.json`), run by the `jsonschema`
//! crate. docs/validation.md says what is checked and what is not.
//!
//! One validator is compiled at start for all types: HL7's `ResourceList`
//! (any resource, a `oneOf` of all 145 types) becomes a dispatch on
//! `resourceType`, so a resource — and every resource nested in it
//! (contained, Bundle entries, Parameters) — is checked against its own
//! definition, with errors that point into it. Where the schema is weaker
//! than the specification, a few rules are added (`keywords`, `rules`).

pub mod elements;
mod hints;
mod keywords;
mod messages;
mod rules;
mod schema;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

pub use schema::SchemaError;

/// Most problems one validation reports; the rest are counted.
pub const MAX_PROBLEMS: usize = 20;

/// What to do with elements the definitions do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownElements {
    /// Refuse them (the default, and what FHIR R4 §2.6.2 asks of a server).
    #[default]
    Refuse,
    /// Accept and keep them, for migrating data written by a laxer server
    /// (`BOX_VALIDATION_UNKNOWN_ELEMENTS=allow`).
    Allow,
}

/// One structural problem: where (a FHIRPath such as
/// `Patient.name[0].given[1]`) and what to fix. Messages never repeat the
/// value that was sent, so a misplaced secret is not echoed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub expression: String,
    pub message: String,
}

/// What sort of problem, in the terms of FHIR's IssueType value set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Unknown element, wrong JSON type, single where a list belongs (`structure`).
    Structure,
    /// A required element is missing (`required`).
    Required,
    /// A primitive value is malformed or out of range (`value`).
    Value,
    /// A code outside a required value set (`code-invalid`).
    Code,
    /// A rule across elements is broken (`invariant`).
    Invariant,
}

impl ProblemKind {
    /// The OperationOutcome issue type code.
    pub fn code(self) -> &'static str {
        match self {
            ProblemKind::Structure => "structure",
            ProblemKind::Required => "required",
            ProblemKind::Value => "value",
            ProblemKind::Code => "code-invalid",
            ProblemKind::Invariant => "invariant",
        }
    }
}

/// The problems of one resource: at most `MAX_PROBLEMS`, and how many more
/// there were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problems {
    pub listed: Vec<Problem>,
    pub more: usize,
}

impl Problems {
    fn push(&mut self, problem: Problem) {
        if self.listed.len() < MAX_PROBLEMS {
            self.listed.push(problem);
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.more == 0
    }
}

/// Resources with more JSON values than this get their first problem
/// listed only (see `Validator::validate`).
pub const FULL_REPORT_VALUES: usize = 50_000;

/// The number of JSON values in `value`, counted up to just past `limit`.
fn values_in(value: &Value, limit: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        count += 1;
        if count > limit {
            break;
        }
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(fields) => stack.extend(fields.values()),
            _ => {}
        }
    }
    count
}

/// The compiled validators of every resource type this server stores.
pub struct Validator {
    /// Answers "valid or not" fast (dispatch by `anyOf` on resourceType).
    check: jsonschema::Validator,
    /// Lists the problems of a resource the check refused.
    report: jsonschema::Validator,
    types: HashSet<String>,
    hints: hints::Hints,
    unknown: UnknownElements,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("types", &self.types.len())
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl Validator {
    /// Compiles the validator of every resource type (FHIR R4 and the
    /// server's own types), once per process and setting (`shared`).
    pub fn new(unknown: UnknownElements) -> Result<Validator, SchemaError> {
        let (check, report, types, hints) = schema::load()?.compile()?;
        Ok(Validator {
            check,
            report,
            types: types.into_iter().collect(),
            hints,
            unknown,
        })
    }

    /// The validator for `unknown`, compiled on first use and then shared
    /// by every server of this process (tests start many).
    pub fn shared(unknown: UnknownElements) -> Result<Arc<Validator>, SchemaError> {
        static REFUSE: OnceLock<Arc<Validator>> = OnceLock::new();
        static ALLOW: OnceLock<Arc<Validator>> = OnceLock::new();
        let cell = match unknown {
            UnknownElements::Refuse => &REFUSE,
            UnknownElements::Allow => &ALLOW,
        };
        if let Some(v) = cell.get() {
            return Ok(v.clone());
        }
        let compiled = Arc::new(Validator::new(unknown)?);
        Ok(cell.get_or_init(|| compiled).clone())
    }

    /// The resource types there is a validator for.
    pub fn knows(&self, resource_type: &str) -> bool {
        self.types.contains(resource_type)
    }

    /// Checks `body`, a resource of `resource_type`, against the
    /// definitions: element names, types, primitive formats, single or
    /// repeating, required elements, required code bindings, at most one
    /// variant of a choice element, local references and contained
    /// resources, and every nested resource by its own type.
    pub fn validate(&self, resource_type: &str, body: &Value) -> Result<(), Problems> {
        let mut problems = Problems::default();
        if body.get("resourceType").and_then(Value::as_str) != Some(resource_type) {
            problems.push(Problem {
                kind: ProblemKind::Structure,
                expression: "resourceType".into(),
                message: format!("resourceType must be {resource_type:?}"),
            });
            return Err(problems);
        }
        if !self.check.is_valid(body) {
            let mut found: Vec<Problem> = Vec::new();
            // The schema library gathers every error before returning any,
            // one or more per faulty value: a large resource gets its first
            // problem only, so a body of a million bad values costs no more
            // memory than one.
            let errors: Box<dyn Iterator<Item = jsonschema::ValidationError<'_>>> =
                if values_in(body, FULL_REPORT_VALUES) > FULL_REPORT_VALUES {
                    Box::new(self.report.validate(body).err().into_iter())
                } else {
                    Box::new(self.report.iter_errors(body))
                };
            for error in errors {
                for described in messages::describe(&error, resource_type, &self.hints) {
                    if self.unknown == UnknownElements::Allow && described.unknown_element {
                        continue;
                    }
                    found.push(described.problem);
                }
            }
            // A value of the wrong JSON type also fails its type's pattern
            // (`"active": "yes"`); the type is the one thing to fix.
            let wrong_type: HashSet<String> = found
                .iter()
                .filter(|p| p.kind == ProblemKind::Structure)
                .map(|p| p.expression.clone())
                .collect();
            for problem in found {
                if problem.kind == ProblemKind::Value && wrong_type.contains(&problem.expression) {
                    continue;
                }
                problems.push(problem);
            }
        }
        rules::check_all(body, resource_type, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
