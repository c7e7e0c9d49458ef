//! Test-only helpers shared by every fhirbox crate: one way to wait for a
//! condition with a deadline ([`wait_until`], [`wait_until_async`]), fresh
//! PostgreSQL databases (feature `postgres`), and [`backend_variants!`], which
//! runs one test function on SQLite always and on PostgreSQL when
//! `FHIRBOX_TEST_POSTGRES_URL` is set — shown as ignored, not as passed, when
//! it is not.

#[cfg(feature = "postgres")]
pub mod postgres;
mod wait;

pub use wait::{wait_for_async, wait_until, wait_until_async};

/// The database a test variant runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The variable that names the PostgreSQL server tests create their databases on.
pub const POSTGRES_URL_VAR: &str = "FHIRBOX_TEST_POSTGRES_URL";

/// Wraps one PostgreSQL test function: marks it `#[ignore]` unless this crate
/// was built with `FHIRBOX_TEST_POSTGRES_URL` or `CI` set (see `build.rs`), so
/// `cargo test` reports it as ignored instead of passing without running it.
#[cfg(fhirbox_pg)]
#[macro_export]
macro_rules! postgres_variant {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        $(#[$attr])*
        async fn $name() $body
    };
}

/// Wraps one PostgreSQL test function: marks it `#[ignore]` unless this crate
/// was built with `FHIRBOX_TEST_POSTGRES_URL` or `CI` set (see `build.rs`), so
/// `cargo test` reports it as ignored instead of passing without running it.
#[cfg(not(fhirbox_pg))]
#[macro_export]
macro_rules! postgres_variant {
    ($(#[$attr:meta])* async fn $name:ident() $body:block) => {
        $(#[$attr])*
        #[ignore = "set FHIRBOX_TEST_POSTGRES_URL to run the PostgreSQL variant"]
        async fn $name() $body
    };
}

/// For each listed `async fn name(..)` of the calling module, generates
/// `mod name { sqlite, postgres }`: two tokio tests that call it once per
/// backend, so `name::sqlite` and `name::postgres` can be filtered apart.
///
/// - `backend_variants!(a, b)` calls `a(Backend::Sqlite)`, `a(Backend::Postgres)`;
/// - `backend_variants!(setup = path::to::spawn; a, b)` calls
///   `a(path::to::spawn(backend).await)`, for functions that take a ready
///   fixture (a running app, an open store). The path must be absolute
///   (`crate::…`) because it is used inside the generated module.
#[macro_export]
macro_rules! backend_variants {
    (setup = $setup:path; $($name:ident),* $(,)?) => {
        $( $crate::backend_variants!(@module $name ($setup)); )*
    };
    ($($name:ident),* $(,)?) => {
        $( $crate::backend_variants!(@module $name ()); )*
    };
    (@module $name:ident ($($setup:path)?)) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::backend_variants!(@call $name $crate::Backend::Sqlite $(, $setup)?)
            }

            $crate::postgres_variant! {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::backend_variants!(@call $name $crate::Backend::Postgres $(, $setup)?)
                }
            }
        }
    };
    (@call $name:ident $backend:expr) => {
        super::$name($backend).await
    };
    (@call $name:ident $backend:expr, $setup:path) => {
        super::$name($setup($backend).await).await
    };
}
