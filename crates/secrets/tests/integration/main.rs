//! Integration tests of fhirbox-secrets: real files, real inotify, and rotations replayed with the
//! Kubernetes atomic writer (`fhirbox_secrets::atomic_writer`). Nothing waits on a bare sleep:
//! every timing assertion polls a condition against a deadline.

mod common;

mod concurrency;
mod config_reload;
mod file_faults;
mod in_place_writers;
mod leaks;
mod rotation;
mod values_and_scope;
