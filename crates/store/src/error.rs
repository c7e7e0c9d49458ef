//! The store's own error enum. Driver errors are classified here, inside the
//! crate, so no handler ever matches on a database message.

/// The source of a driver error, boxed so no driver type is part of this
/// crate's public API.
pub type ErrorSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of refusal a write transform or finalizer made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The resource (or the change to it) breaks a rule the caller can fix.
    Invalid,
    /// The resource does not have the structure its type defines (unknown
    /// elements, wrong types, malformed values): the request was wrong as
    /// sent (400 rather than 422).
    Malformed,
    /// The resource asks for something this server does not offer (as
    /// configured), e.g. a secret reference while external secrets are off.
    NotSupported,
    /// The server could not do its part (a corrupt stored body, a failed
    /// hash): not the caller's fault; logged, never detailed to the caller.
    Internal,
    /// Access control refused the write once its resource was known (a
    /// conditional write's match).
    Forbidden,
}

/// Why a write transform or finalizer refused to store a resource. Nothing
/// is written when one is returned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    /// Where in the resource the problem is (`Client.secret`), if known.
    pub location: Option<String>,
    /// Every problem, when a check found several (a structural validation
    /// lists each); empty when `message` says it all.
    pub issues: Vec<RefusalIssue>,
}

/// One of several problems a refusal reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalIssue {
    /// The OperationOutcome issue type code (`structure`, `value`, …).
    pub code: String,
    pub message: String,
    pub location: Option<String>,
}

impl Refusal {
    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Invalid,
            message: message.into(),
            location: None,
            issues: Vec::new(),
        }
    }

    /// Access control refused the write (403).
    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Forbidden,
            message: message.into(),
            location: None,
            issues: Vec::new(),
        }
    }

    /// The request was wrong as sent (400).
    pub fn malformed(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Malformed,
            message: message.into(),
            location: None,
            issues: Vec::new(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Refusal {
        Refusal {
            kind: RefusalKind::Internal,
            message: message.into(),
            location: None,
            issues: Vec::new(),
        }
    }

    pub fn at(mut self, location: impl Into<String>) -> Refusal {
        self.location = Some(location.into());
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No resource with this type and id has ever existed.
    #[error("{resource_type}/{id} does not exist")]
    NotFound { resource_type: String, id: String },
    /// The resource exists but its current version is a deletion.
    #[error("{resource_type}/{id} was deleted (version {version_id})")]
    Gone {
        resource_type: String,
        id: String,
        version_id: i64,
    },
    /// `If-Match` named a version other than the current one.
    #[error("{resource_type}/{id}: version {expected} was expected but the current version is {}", current.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))]
    VersionConflict {
        resource_type: String,
        id: String,
        expected: i64,
        current: Option<i64>,
    },
    /// A create found a live resource with the same id.
    #[error("{resource_type}/{id} already exists")]
    AlreadyExists { resource_type: String, id: String },
    /// The criteria of a conditional write matched more than one resource.
    #[error("more than one {resource_type} matches {criteria}")]
    MultipleMatches {
        resource_type: String,
        criteria: String,
    },
    /// The criteria of a conditional patch or delete matched nothing.
    #[error("no {resource_type} matches {criteria}")]
    NoMatch {
        resource_type: String,
        criteria: String,
    },
    /// A resource matching a conditional create's criteria appeared between
    /// the transaction's own search and its write: stored by a concurrent
    /// request, or by another entry of the same transaction.
    #[error("a {resource_type} matching {criteria} was stored after this transaction searched for one (by a concurrent request, or by another of its own entries)")]
    MatchAppeared {
        resource_type: String,
        criteria: String,
    },
    /// The resource a transaction's conditional update, patch or delete
    /// matched when the transaction searched is no longer what its criteria
    /// match at the write (a concurrent change, or another of its entries).
    #[error("what {criteria} matches among {resource_type} resources changed after this transaction searched (by a concurrent request, or by another of its own entries)")]
    MatchChanged {
        resource_type: String,
        criteria: String,
    },
    /// Concurrent transactions collided (deadlock or serialization failure); retrying may succeed.
    #[error("the database reported a conflict with a concurrent transaction; retry the request")]
    Contention,
    /// A paging cursor that this store did not issue, or issued for another query.
    #[error("the paging cursor is not valid for this query")]
    InvalidCursor,
    /// A write transform (e.g. a JSON Patch) or finalizer refused the resource.
    #[error("the change was refused: {0}")]
    Rejected(Refusal),
    /// The database could not be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] ErrorSource),
    /// Bad store configuration (URL, file path).
    #[error("{0}")]
    Config(String),
    /// Anything else the database reported; logged, never shown to clients.
    #[error("database error")]
    Database(#[source] ErrorSource),
    /// A stored body that is not valid JSON, or similar corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Driver results inside this crate: `.db()?` classifies a driver error
/// into a `StoreError`. Not a public `From` impl, so no driver type is part
/// of this crate's API.
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for Result<T, sqlx::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(classify)
    }
}

impl<T> DbResult<T> for Result<T, rusqlite::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(classify_sqlite)
    }
}

/// Sorts an error of the SQLite writer's driver into the store's kinds, as
/// `classify` does for sqlx's.
fn classify_sqlite(err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &err {
        rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Contention,
            ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull => {
                StoreError::Unavailable(Box::new(err))
            }
            _ => StoreError::Database(Box::new(err)),
        },
        _ => StoreError::Database(Box::new(err)),
    }
}

/// Sorts a driver error into the store's kinds.
pub(crate) fn classify(err: sqlx::Error) -> StoreError {
    {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(err)),
            sqlx::Error::Database(db) => {
                // SQLSTATE 40001 serialization_failure, 40P01 deadlock_detected (PostgreSQL);
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6) (SQLite).
                match db.code().as_deref() {
                    Some("40001") | Some("40P01") | Some("5") | Some("6") | Some("517") => {
                        StoreError::Contention
                    }
                    // 57P01 admin_shutdown, 57P03 cannot_connect_now, 08xxx connection exceptions.
                    Some(code) if code.starts_with("08") || code == "57P01" || code == "57P03" => {
                        StoreError::Unavailable(Box::new(err))
                    }
                    _ => StoreError::Database(Box::new(err)),
                }
            }
            _ => StoreError::Database(Box::new(err)),
        }
    }
}
