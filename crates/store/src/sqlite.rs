//! SQLite backend: one writer connection (SQLite allows one writer at a time;
//! a single connection serialises writes without SQLITE_BUSY), a small pool of
//! readers, WAL mode so readers never wait for the writer.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::error::DbResult;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

// SQLite has one writer at a time, so the next key is the largest plus one.
crate::sql::sql_backend!(
    SqliteStore,
    Sqlite,
    SqliteConnection,
    "",
    "(SELECT COALESCE(MAX(res_key), 0) + 1 FROM resource)"
);

/// Resources in an embedded SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

const READERS: u32 = 4;

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &str) -> StoreResult<SqliteStore> {
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::Config(
                "SQLite needs a file path (sqlite:<path>); in-memory databases are not supported"
                    .into(),
            ));
        }
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Config(format!(
                    "cannot create the database directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| StoreError::Config(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await
            .db()?;
        {
            let mut conn = writer.acquire().await.db()?;
            run_migrations(&mut conn, crate::migrate::SQLITE, None).await?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .db()?;
        Ok(SqliteStore { writer, reader })
    }
}
