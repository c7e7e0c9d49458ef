//! PostgreSQL backend: one pool for reads and writes; rows are locked with
//! `FOR UPDATE` during a write so concurrent updates never lose a version.

use std::time::Duration;

use crate::error::DbResult;
use crate::sql::{Columns, TotalFrom};
use crate::{ChangeMarker, ResourceHistory, ResourceRead, ResourceSearch, StoreHealth};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres};

crate::sql::sql_backend!(PostgresStore, Postgres, PgConnection, "FOR UPDATE", "BEGIN");
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
    /// Connections of subscription delivery (`outbox.rs`): each holds a
    /// destination's lease for as long as its worker delivers, apart from
    /// the connections requests use.
    outbox: PgPool,
}

/// Most destinations one instance delivers at once (a connection each).
const OUTBOX_CONNECTIONS: u32 = 32;

const MAX_CONNECTIONS: u32 = 16;
/// How long a pooled connection may sit idle before it is pinged again.
const PING_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Serialises migrations when several instances start at once.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7262890113)";

impl PostgresStore {
    /// The pool writes outside a resource write use (the outbox).
    pub(crate) fn write_pool(&self) -> &sqlx::PgPool {
        &self.writer
    }

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
        let outbox = PgPoolOptions::new()
            .max_connections(OUTBOX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(url)
            .db()?;
        Ok(PostgresStore {
            writer: pool.clone(),
            reader: pool,
            outbox,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        // A lease still held (a worker that did not stop in time, in the
        // middle of a send) is not waited for: it ends when that worker
        // gives it up or the process exits.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.outbox.close()).await;
    }

    /// The pool of subscription delivery's leases.
    pub(crate) fn outbox_pool(&self) -> &PgPool {
        &self.outbox
    }

    async fn setting(&self, name: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query(crate::sql::READ_SETTING)
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .db()?;
        row.map(|r| r.try_get::<String, _>(0)).transpose().db()
    }
}

impl Columns for PgRow {
    fn text(&self, name: &str) -> StoreResult<Option<String>> {
        self.try_get(name).db()
    }
    fn int(&self, name: &str) -> StoreResult<Option<i64>> {
        self.try_get(name).db()
    }
    fn float(&self, name: &str) -> StoreResult<Option<f64>> {
        self.try_get(name).db()
    }
    fn flag(&self, name: &str) -> StoreResult<bool> {
        self.try_get(name).db()
    }
}

impl ResourceRead for PostgresStore {
    async fn read(&self, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        let row = sqlx::query(crate::sql::READ_ROW)
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .db()?;
        row.as_ref().map(crate::sql::stored).transpose()
    }

    async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> StoreResult<Option<StoredResource>> {
        let row = sqlx::query(crate::sql::READ_VERSION)
            .bind(resource_type)
            .bind(id)
            .bind(version_id)
            .fetch_optional(&self.reader)
            .await
            .db()?;
        row.as_ref().map(crate::sql::stored).transpose()
    }
}

impl ResourceSearch for PostgresStore {
    async fn search(&self, q: SearchQuery) -> StoreResult<SearchPage> {
        let mut plan = query::search(&q)?;
        // A search that combines filters is planned for its values each
        // time rather than kept prepared: PostgreSQL switches a prepared
        // statement to a generic plan after five runs, and a generic plan
        // cannot tell a reference that matches 50 rows from a code that
        // matches 50,000 (a search with one filter has one way in, and
        // skips the planning)
        // (https://www.postgresql.org/docs/current/sql-prepare.html, "Notes").
        let prepared = q.filters.len() <= 1;
        let rows = bind_all(
            sqlx::query(&plan.select.text),
            std::mem::take(&mut plan.select.binds),
        )
        .persistent(prepared)
        .fetch_all(&self.reader)
        .await
        .db()?;
        let mut in_page = None;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let (hit, total) = crate::sql::hit(row, &plan)?;
            in_page = in_page.or(total);
            found.push(hit);
        }
        let total = match crate::sql::total_from(&q, &plan, found.len(), in_page) {
            TotalFrom::Known(total) => total,
            TotalFrom::Count(count) => {
                let row = bind_all(sqlx::query(&count.text), count.binds)
                    .persistent(prepared)
                    .fetch_one(&self.reader)
                    .await
                    .db()?;
                query::counted(q.total, row.try_get::<i64, _>(0).db()?)
            }
        };
        Ok(query::search_page(&q, plan.backwards, found, total))
    }
}

impl ResourceHistory for PostgresStore {
    async fn history(&self, q: HistoryQuery) -> StoreResult<HistoryPage> {
        let (select, count) = query::history(&q)?;
        let rows = bind_all(sqlx::query(&select.text), select.binds)
            .fetch_all(&self.reader)
            .await
            .db()?;
        let rows = rows
            .iter()
            .map(|row| Ok((crate::sql::stored(row)?, row.try_get::<i64, _>("seq").db()?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let (mut page, to_count) = crate::sql::history_page(&q, rows);
        if to_count {
            let row = bind_all(sqlx::query(&count.text), count.binds)
                .fetch_one(&self.reader)
                .await
                .db()?;
            crate::sql::counted_history(&mut page, row.try_get::<i64, _>(0).db()?);
        }
        Ok(page)
    }
}

impl ChangeMarker for PostgresStore {
    async fn latest_change(&self, resource_types: &[&str]) -> StoreResult<i64> {
        let sql = crate::sql::latest_change_sql(resource_types.len());
        let mut q = sqlx::query(&sql);
        for t in resource_types {
            q = q.bind(*t);
        }
        let row = q.fetch_one(&self.reader).await.db()?;
        row.try_get::<i64, _>(0).db()
    }
}

impl StoreHealth for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await.db()?;
        Ok(())
    }
}
