//! One integration test binary: every module runs against the real server over
//! real HTTP, on SQLite always and on PostgreSQL when configured.

mod helpers;
mod oidc;
mod raw_http;

mod access;
mod auth;

mod bundles;
mod chains;
mod concurrency;
mod conditional;
mod crud;
mod errors;
mod first_run;
mod history;
mod identity_providers;
mod includes;
mod kafka;
mod operations;
mod operator_surface;
mod search;
mod search_params;
mod shaping;
mod signin;
mod subscriptions;
mod token_endpoint;
mod tokens;
mod transport;
mod validation;
mod vault;
