//! The store's own error enum. Driver errors are classified here, inside the
//! crate, so no handler ever matches on a database message.

/// Error type a write transform may return; the server downcasts it back.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// Concurrent transactions collided (deadlock or serialization failure); retrying may succeed.
    #[error("the database reported a conflict with a concurrent transaction; retry the request")]
    Contention,
    /// A paging cursor that this store did not issue, or issued for another query.
    #[error("the paging cursor is not valid for this query")]
    InvalidCursor,
    /// A write transform (e.g. a JSON Patch) refused the resource.
    #[error("the change was refused: {0}")]
    Rejected(BoxError),
    /// The database could not be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Bad store configuration (URL, file path).
    #[error("{0}")]
    Config(String),
    /// Anything else the database reported; logged, never shown to clients.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A stored body that is not valid JSON, or similar corruption.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            sqlx::Error::Database(db) => {
                // SQLSTATE 40001 serialization_failure, 40P01 deadlock_detected (PostgreSQL);
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6) (SQLite).
                match db.code().as_deref() {
                    Some("40001") | Some("40P01") | Some("5") | Some("6") | Some("517") => {
                        StoreError::Contention
                    }
                    // 57P01 admin_shutdown, 57P03 cannot_connect_now, 08xxx connection exceptions.
                    Some(code) if code.starts_with("08") || code == "57P01" || code == "57P03" => {
                        StoreError::Unavailable(err)
                    }
                    _ => StoreError::Database(err),
                }
            }
            _ => StoreError::Database(err),
        }
    }
}
