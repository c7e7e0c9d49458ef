//! FHIR R4 search on the FHIR side: HL7's SearchParameter definitions
//! compiled into a table (`definitions`), the evaluator of their FHIRPath
//! expressions (`path`), and the typed values a resource is indexed by
//! (`index`). The store keeps the index; the REST layer parses queries.

pub mod definitions;
pub mod index;
pub mod path;

pub use definitions::{Component, ParamType, SearchParam, SearchParams, UNSUPPORTED};
pub use index::{index_values, normalize, IndexValue};
