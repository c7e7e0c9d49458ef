//! The subscriptions' outbox (docs/subscriptions.md): notifications a write
//! queued in its own transaction (`sql.rs`, `sqlite_writer.rs`), taken for
//! delivery one destination at a time, oldest first, and deleted once the
//! receiver acknowledged them.
//!
//! On PostgreSQL several instances may share the outbox: a worker holds
//! its destination's row of `subscription_lease` (`FOR UPDATE SKIP
//! LOCKED`) in a transaction for as long as it delivers, so each
//! destination is delivered by one worker at a time, in order, and a worker
//! that dies (even by kill -9) lets the lease go with its connection. An
//! SQLite database belongs to one process, whose delivery runs one task
//! per destination.

use std::future::Future;

use sqlx::Row as _;

use crate::error::DbResult;
use crate::model::OutboxRow;
use crate::{PostgresStore, SqliteStore, Store, StoreResult};

const SELECT_ROWS: &str = "SELECT seq, destination, topic, resource_type, resource_id, version_id, interaction, created_at \
     FROM subscription_outbox WHERE destination = $1 ORDER BY seq LIMIT $2";

const DROP_EVENTS: &str =
    "DELETE FROM subscription_outbox WHERE destination = $1 AND created_at < $2";
const QUEUED_DESTINATIONS: &str = "SELECT DISTINCT destination FROM subscription_outbox";

/// Reads an outbox row of either backend.
macro_rules! outbox_row {
    ($row:expr) => {{
        let r = $row;
        Ok::<OutboxRow, crate::StoreError>(OutboxRow {
            seq: r.try_get("seq").db()?,
            destination: r.try_get("destination").db()?,
            topic: r.try_get("topic").db()?,
            resource_type: r.try_get("resource_type").db()?,
            resource_id: r.try_get("resource_id").db()?,
            version_id: r.try_get("version_id").db()?,
            interaction: r.try_get("interaction").db()?,
            created_at: r.try_get("created_at").db()?,
        })
    }};
}

/// The oldest queued notifications of one destination, taken for delivery.
/// Acknowledge what was delivered; dropping the claim (or
/// [`OutboxClaim::release`]) keeps every row for the next attempt.
pub struct OutboxClaim {
    rows: Vec<OutboxRow>,
    hold: Hold,
}

enum Hold {
    Sqlite(sqlx::SqlitePool),
    /// The transaction holding the destination's lease row.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl OutboxClaim {
    /// The notifications taken, oldest first.
    pub fn rows(&self) -> &[OutboxRow] {
        &self.rows
    }

    /// Deletes the rows numbered `seqs` (delivered) and lets the lease go.
    pub async fn acknowledge(self, seqs: &[i64]) -> StoreResult<()> {
        match self.hold {
            Hold::Postgres(mut tx) => {
                if !seqs.is_empty() {
                    sqlx::query("DELETE FROM subscription_outbox WHERE seq = ANY($1)")
                        .bind(seqs)
                        .execute(&mut *tx)
                        .await
                        .db()?;
                }
                tx.commit().await.db()
            }
            Hold::Sqlite(pool) => {
                for chunk in seqs.chunks(500) {
                    let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let text = format!(
                        "DELETE FROM subscription_outbox WHERE seq IN ({})",
                        marks.join(", ")
                    );
                    let mut query = sqlx::query(&text);
                    for seq in chunk {
                        query = query.bind(seq);
                    }
                    query.execute(&pool).await.db()?;
                }
                Ok(())
            }
        }
    }

    /// Lets the lease go and keeps every row.
    pub async fn release(self) -> StoreResult<()> {
        match self.hold {
            Hold::Postgres(tx) => tx.rollback().await.db(),
            Hold::Sqlite(_) => Ok(()),
        }
    }
}

/// The outbox of subscription notifications.
pub trait Outbox {
    /// Takes up to `limit` of the oldest notifications of `destination`;
    /// `None` when another worker is delivering that destination.
    fn claim_events(
        &self,
        destination: &str,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Option<OutboxClaim>>> + Send;

    /// How many notifications of `destination` are queued.
    fn count_events(&self, destination: &str) -> impl Future<Output = StoreResult<i64>> + Send;

    /// Removes the notifications of `destination` queued before `before`
    /// (microseconds since the epoch: when the destination was deleted);
    /// returns how many there were.
    fn drop_events(
        &self,
        destination: &str,
        before: i64,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// The destinations that have queued notifications.
    fn queued_destinations(&self) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit.clamp(1, 10_000)).unwrap_or(1)
}

impl Outbox for PostgresStore {
    async fn claim_events(
        &self,
        destination: &str,
        limit: usize,
    ) -> StoreResult<Option<OutboxClaim>> {
        let pool = self.write_pool();
        sqlx::query(
            "INSERT INTO subscription_lease (destination) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(destination)
        .execute(pool)
        .await
        .db()?;
        let mut tx = pool.begin().await.db()?;
        let held = sqlx::query(
            "SELECT destination FROM subscription_lease WHERE destination = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(destination)
        .fetch_optional(&mut *tx)
        .await
        .db()?;
        if held.is_none() {
            tx.rollback().await.db()?;
            return Ok(None);
        }
        let rows = sqlx::query(SELECT_ROWS)
            .bind(destination)
            .bind(limit_of(limit))
            .fetch_all(&mut *tx)
            .await
            .db()?;
        let rows = rows
            .iter()
            .map(|r| outbox_row!(r))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(OutboxClaim {
            rows,
            hold: Hold::Postgres(tx),
        }))
    }

    async fn count_events(&self, destination: &str) -> StoreResult<i64> {
        sqlx::query("SELECT COUNT(*) FROM subscription_outbox WHERE destination = $1")
            .bind(destination)
            .fetch_one(self.write_pool())
            .await
            .db()?
            .try_get(0)
            .db()
    }

    async fn drop_events(&self, destination: &str, before: i64) -> StoreResult<u64> {
        let done = sqlx::query(DROP_EVENTS)
            .bind(destination)
            .bind(before)
            .execute(self.write_pool())
            .await
            .db()?;
        Ok(done.rows_affected())
    }

    async fn queued_destinations(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(QUEUED_DESTINATIONS)
            .fetch_all(self.write_pool())
            .await
            .db()?;
        rows.iter().map(|r| r.try_get(0).db()).collect()
    }
}

impl Outbox for SqliteStore {
    async fn claim_events(
        &self,
        destination: &str,
        limit: usize,
    ) -> StoreResult<Option<OutboxClaim>> {
        let pool = self.write_pool().clone();
        let rows = sqlx::query(SELECT_ROWS)
            .bind(destination)
            .bind(limit_of(limit))
            .fetch_all(&pool)
            .await
            .db()?;
        let rows = rows
            .iter()
            .map(|r| outbox_row!(r))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some(OutboxClaim {
            rows,
            hold: Hold::Sqlite(pool),
        }))
    }

    async fn count_events(&self, destination: &str) -> StoreResult<i64> {
        sqlx::query("SELECT COUNT(*) FROM subscription_outbox WHERE destination = $1")
            .bind(destination)
            .fetch_one(self.write_pool())
            .await
            .db()?
            .try_get(0)
            .db()
    }

    async fn drop_events(&self, destination: &str, before: i64) -> StoreResult<u64> {
        let done = sqlx::query(DROP_EVENTS)
            .bind(destination)
            .bind(before)
            .execute(self.write_pool())
            .await
            .db()?;
        Ok(done.rows_affected())
    }

    async fn queued_destinations(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(QUEUED_DESTINATIONS)
            .fetch_all(self.write_pool())
            .await
            .db()?;
        rows.iter().map(|r| r.try_get(0).db()).collect()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call.await,
            Store::Postgres($s) => $call.await,
        }
    };
}

impl Outbox for Store {
    async fn claim_events(
        &self,
        destination: &str,
        limit: usize,
    ) -> StoreResult<Option<OutboxClaim>> {
        delegate!(self, s => s.claim_events(destination, limit))
    }
    async fn count_events(&self, destination: &str) -> StoreResult<i64> {
        delegate!(self, s => s.count_events(destination))
    }
    async fn drop_events(&self, destination: &str, before: i64) -> StoreResult<u64> {
        delegate!(self, s => s.drop_events(destination, before))
    }
    async fn queued_destinations(&self) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.queued_destinations())
    }
}
