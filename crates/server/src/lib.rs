//! The fhirbox server: settings, start-up, the HTTP transport, routes,
//! middleware and extractors around the FHIR REST API of `fhirbox-rest`.

pub mod app;
pub mod auth;
pub mod error;
pub mod extract;
mod fhir_api;
mod health;
mod init_bundle;
pub mod logging;
pub mod metrics;
pub mod response;
pub mod root_secret;
pub mod settings;
pub mod transport;
pub mod validate_store;
pub mod vault;

pub use app::{build_app, run, serve, App, AppState};
pub use settings::Settings;
