//! The HTTP side of authentication: the middleware that guards the API
//! (`layer`), the token endpoint (`endpoint`) and the parsing of the
//! `Authorization` header (`credentials`). The decisions themselves live in
//! the `fhirbox-auth` crate, re-exported here.

pub use fhirbox_auth::*;

pub mod credentials;
pub mod endpoint;
pub mod layer;
pub mod signin;

use std::sync::Arc;

use crate::metrics::Metrics;

/// What the HTTP side of authentication needs of the application: the
/// decisions and the failure counters.
#[derive(Clone)]
pub struct AuthState {
    pub auth: Arc<AuthService>,
    pub metrics: Arc<Metrics>,
}
