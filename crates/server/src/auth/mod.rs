//! The HTTP side of authentication: the middleware that guards the API
//! (`layer`), the token endpoint (`endpoint`) and the parsing of the
//! `Authorization` header (`credentials`). The decisions themselves live in
//! the `fhirbox-auth` crate, re-exported here.

pub use fhirbox_auth::*;

pub mod credentials;
pub mod endpoint;
pub mod layer;
