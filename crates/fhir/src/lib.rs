//! FHIR R4 vocabulary shared by every fhirbox crate: which resource types exist,
//! what a valid id is, how an OperationOutcome is shaped, which fields may
//! carry a reference to an external secret, and the search parameters with
//! the evaluator of their expressions (`search`).

pub mod datetime;
pub mod elements;
pub mod id;
/// Strict JSON parsing (duplicate keys refused), shared with the secrets crate.
pub use fhirbox_json as json;
pub mod outcome;
pub mod resource_types;
pub mod search;
pub mod secret_fields;
pub mod secret_refs;

pub use id::is_valid_id;
pub use outcome::{Issue, IssueSeverity, IssueType, OperationOutcome};
pub use resource_types::{
    all_resource_types, is_known_resource_type, resource_kind, ResourceKind, RESOURCE_TYPES,
    SERVER_RESOURCE_TYPES,
};
