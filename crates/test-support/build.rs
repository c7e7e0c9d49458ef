//! Decides whether the PostgreSQL variants of the test suites are ordinary tests
//! or ignored ones (see `postgres_variant!`). They run when
//! `FHIRBOX_TEST_POSTGRES_URL` is set; under CI (`CI` set, as GitHub Actions and
//! most CI services do) they always run, so a missing URL fails them instead of
//! hiding them.
//!
//! The flag lives in this small crate rather than in the crates under test, so
//! changing the variable rebuilds only this crate and the test targets.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fhirbox_pg)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=FHIRBOX_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-env-changed=CI");
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if set("FHIRBOX_TEST_POSTGRES_URL") || ci {
        println!("cargo::rustc-cfg=fhirbox_pg");
    }
}
