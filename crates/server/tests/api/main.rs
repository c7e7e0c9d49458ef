//! One integration test binary: every module runs against the real server over
//! real HTTP, on SQLite always and on PostgreSQL when configured.

mod helpers;

mod access;
mod auth;

mod bundles;
mod concurrency;
mod crud;
mod errors;
mod history;
mod operations;
mod search;
mod vault;
