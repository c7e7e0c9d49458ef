//! PostgreSQL backend: one pool for reads and writes; rows are locked with
//! `FOR UPDATE` during a write so concurrent updates never lose a version.

use std::time::Duration;

use crate::error::DbResult;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool, Postgres};

crate::sql::sql_backend!(
    PostgresStore,
    Postgres,
    PgConnection,
    "FOR UPDATE",
    "BEGIN",
    true
);
crate::sql::sql_writes!(
    Postgres,
    PgConnection,
    "FOR UPDATE",
    "nextval('resource_res_key_seq')",
    "BEGIN",
    Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
);

/// Resources in a PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
}

const MAX_CONNECTIONS: u32 = 16;
/// How long a pooled connection may sit idle before it is pinged again.
const PING_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Serialises migrations when several instances start at once.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7262890113)";

impl PostgresStore {
    /// Each write set runs in a transaction of its own on one of the pool's
    /// connections; PostgreSQL runs them side by side.
    async fn submit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        write_set(&self.writer, &ops).await
    }

    /// Connects to `url`, creating a pool, and migrates the schema.
    pub async fn open(url: &str) -> StoreResult<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // A connection is pinged before use only when it has sat idle
            // for a while (as HikariCP skips the check for connections used
            // within its `aliveBypassWindowMs`, 500 ms): a connection in
            // steady use has just proven itself, and the ping is a round
            // trip to the server on every request.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .db()?;
        {
            let mut conn = pool.acquire().await.db()?;
            run_migrations(&mut conn, crate::migrate::POSTGRES, Some(MIGRATION_LOCK)).await?;
        }
        Ok(PostgresStore {
            writer: pool.clone(),
            reader: pool,
        })
    }
}
