//! `SecretError`: why one use of one secret failed, with a stable machine-readable reason
//! for logs and metrics (docs/external-secrets.md, "At use": logged and counted with the
//! secret's name and a reason, never its value). No variant can carry secret bytes.

use std::path::PathBuf;

/// Why a secret could not be used. Every variant names the secret; none holds its value.
///
/// `Display` is safe to log; `reason()` is a short stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The name is not in the vault config in force now.
    #[error("secret {name:?} is not defined in the vault config")]
    UnknownSecret {
        /// Secret name as asked for.
        name: String,
    },
    /// The requesting resource is not covered by the secret's scope.
    #[error("{requester} is not in the scope of secret {name:?} (scope: {scope})")]
    NotInScope {
        /// Secret name.
        name: String,
        /// The requester, as `Type/id`.
        requester: String,
        /// The scope in force, comma-separated.
        scope: String,
    },
    /// Nothing at the path, or a symlink on the way points nowhere.
    #[error("secret {name:?}: file {} not found{}", path.display(), if *dangling { " (dangling symlink)" } else { "" })]
    Missing {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
        /// The path itself is a symlink whose target does not exist.
        dangling: bool,
    },
    /// The file is empty, or holds only whitespace, after normalisation
    /// (docs/external-secrets.md, "Reading, caching and rotation": a read never turns into
    /// an empty secret).
    #[error("secret {name:?}: file {} is empty or holds only whitespace", path.display())]
    Empty {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
    },
    /// The file is larger than the configured cap.
    #[error("secret {name:?}: file {} is larger than the limit of {limit} bytes", path.display())]
    TooLarge {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
        /// The cap in bytes.
        limit: u64,
    },
    /// The path resolves to a directory, FIFO, socket or device.
    #[error("secret {name:?}: {} is {kind}, not a regular file", path.display())]
    NotRegular {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
        /// What was found instead, e.g. "a directory".
        kind: &'static str,
    },
    /// The operating system refused the read (permission, ENOTDIR, symlink loop, I/O).
    #[error("secret {name:?}: cannot read {}: {detail}", path.display())]
    Unreadable {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
        /// The operating system's error message (never file content).
        detail: String,
    },
    /// The path, as written or once resolved through symlinks, lies under `/proc`, `/sys` or
    /// `/dev`: system files (`/proc/self/environ` holds the server's own environment,
    /// including its root secret) are never read as secrets.
    #[error("secret {name:?}: {} {}under {root}; secrets are never read from /proc, /sys or /dev (system files, such as /proc/self/environ with the server's own environment)", path.display(), resolved_text(resolved.as_deref()))]
    RefusedPath {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
        /// Where the path leads through symlinks, when that is what lies under `root`.
        resolved: Option<PathBuf>,
        /// The refused tree: `/proc`, `/sys` or `/dev`.
        root: &'static str,
    },
    /// The content changed between every pair of re-reads for the whole settle limit: the
    /// file is being rewritten in place and no complete value could be told apart.
    #[error("secret {name:?}: file {} kept changing while it was read; no value was adopted", path.display())]
    Unsettled {
        /// Secret name.
        name: String,
        /// Path from the vault config.
        path: PathBuf,
    },
    /// The value is not acceptable for the way it is being used, e.g. a byte outside
    /// VSCHAR for an OAuth client secret (RFC 6749 appendix A).
    #[error("secret {name:?}: the value {requirement}")]
    InvalidCharacters {
        /// Secret name.
        name: String,
        /// What the value failed to be.
        requirement: &'static str,
    },
}

impl SecretError {
    /// A short stable label for metrics and logs: `unknown_secret`, `not_in_scope`,
    /// `missing`, `empty`, `too_large`, `not_regular`, `unreadable`, `refused_path`,
    /// `unsettled`, `invalid_characters`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownSecret { .. } => "unknown_secret",
            Self::NotInScope { .. } => "not_in_scope",
            Self::Missing { .. } => "missing",
            Self::Empty { .. } => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::NotRegular { .. } => "not_regular",
            Self::Unreadable { .. } => "unreadable",
            Self::RefusedPath { .. } => "refused_path",
            Self::Unsettled { .. } => "unsettled",
            Self::InvalidCharacters { .. } => "invalid_characters",
        }
    }

    /// The secret this error is about.
    pub fn name(&self) -> &str {
        match self {
            Self::UnknownSecret { name }
            | Self::NotInScope { name, .. }
            | Self::Missing { name, .. }
            | Self::Empty { name, .. }
            | Self::TooLarge { name, .. }
            | Self::NotRegular { name, .. }
            | Self::Unreadable { name, .. }
            | Self::RefusedPath { name, .. }
            | Self::Unsettled { name, .. }
            | Self::InvalidCharacters { name, .. } => name,
        }
    }
}

fn resolved_text(resolved: Option<&std::path::Path>) -> String {
    match resolved {
        Some(real) => format!("resolves to {}, which is ", real.display()),
        None => "is ".to_string(),
    }
}
