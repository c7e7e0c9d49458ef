//! The fhirbox server: settings, the axum application, and the FHIR REST API.

pub mod app;
pub mod auth;
mod bundle;
mod bundle_out;
pub mod capability;
pub mod error;
pub mod extract;
mod fhir_api;
mod health;
pub mod hooks;
mod init_bundle;
pub mod logging;
pub mod metrics;
pub mod resource;
pub mod response;
pub mod root_secret;
pub mod search;
pub mod settings;
pub mod transport;
pub mod vault;

pub use app::{build_app, run, serve, App, AppState};
pub use settings::Settings;
