//! File-delivered secrets for fhirbox: the vault config, a resolver that caches values,
//! enforces scope and compares client secrets in constant time, and a directory watcher that
//! follows rotations done by the Kubernetes atomic writer (`pkg/volume/util/atomic_writer.go`
//! in https://github.com/kubernetes/kubernetes). The behaviour is described in
//! docs/external-secrets.md ("The vault config", "At use", "Reading, caching and rotation").
//! No HTTP, no SQL, no async runtime: usable by any Rust service.
//!
//! ```no_run
//! use fhirbox_secrets::{Requester, ResolverOptions, SecretResolver};
//!
//! let options = ResolverOptions::new(["Client", "IdentityProvider", "TokenIntrospector", "AidboxTopicDestination"]);
//! let resolver = SecretResolver::start("/etc/fhirbox/vault-config.json", options)?;
//! let ok = resolver.verify_client_secret("client-secret", &Requester::new("Client", "basic"), b"presented")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Secret values only ever exist inside [`SecretValue`], which cannot be printed or
//! serialised and is wiped on drop.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(unix))]
compile_error!(
    "fhirbox-secrets supports Unix-like systems only (inotify, O_NONBLOCK, symlinked mounts)"
);

mod config;
mod error;
mod file;
mod resolver;
mod scope;
mod value;
mod watcher;

#[cfg(feature = "test-support")]
pub mod atomic_writer;

pub use config::{is_valid_secret_name, ConfigError, ConfigProblem, SecretEntry, VaultConfig};
pub use error::SecretError;
pub use file::{read_secret_file, DEFAULT_MAX_FILE_SIZE};
pub use resolver::{
    ConfigFailure, ConfigStatus, NoopEvents, ResolverOptions, SecretEvents, SecretResolver,
    SecretState, SecretStatus,
};
pub use scope::{Requester, ScopeRule};
pub use value::SecretValue;
