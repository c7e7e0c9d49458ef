//! The subscriptions' outbox (docs/subscriptions.md): notifications a write
//! queued in its own transaction (`sql.rs`, `sqlite_writer.rs`), taken for
//! delivery one destination at a time, oldest first, and deleted once the
//! receiver acknowledged them.
//!
//! On PostgreSQL several instances may share the outbox. A worker delivers
//! a destination only while it holds the destination's lease: a
//! session-level advisory lock (`pg_try_advisory_lock`, which does not wait
//! for a lock another session holds) on a connection of its own. No
//! transaction stays open while a notification is sent, so a slow receiver
//! neither holds back vacuum nor takes connections from requests, and a
//! worker that dies (even by kill -9) lets the lease go with its
//! connection. An SQLite database belongs to one process, whose delivery
//! runs one task per destination.

use std::future::Future;

use sqlx::Row as _;

use crate::error::DbResult;
use crate::model::OutboxRow;
use crate::{PostgresStore, SqliteStore, Store, StoreResult};

const SELECT_ROWS: &str = "SELECT seq, destination, destination_version, topic, resource_type, resource_id, version_id, interaction, created_at \
     FROM subscription_outbox WHERE destination = $1 ORDER BY seq LIMIT $2";
const COUNT_EVENTS: &str = "SELECT COUNT(*) FROM subscription_outbox WHERE destination = $1";
const DROP_EVENTS: &str =
    "DELETE FROM subscription_outbox WHERE destination = $1 AND destination_version < $2";
const QUEUED_DESTINATIONS: &str = "SELECT DISTINCT destination FROM subscription_outbox";
const HAS_EVENTS: &str = "SELECT 1 FROM subscription_outbox WHERE destination = $1 LIMIT 1";
/// The lease of a destination: an advisory lock on a 64-bit hash of its id
/// (the second argument is the hash's seed).
const TRY_LEASE: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 7262890115))";
const END_LEASE: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 7262890115))";

/// Reads an outbox row of either backend.
macro_rules! outbox_row {
    ($row:expr) => {{
        let r = $row;
        Ok::<OutboxRow, crate::StoreError>(OutboxRow {
            seq: r.try_get("seq").db()?,
            destination: r.try_get("destination").db()?,
            destination_version: r.try_get("destination_version").db()?,
            topic: r.try_get("topic").db()?,
            resource_type: r.try_get("resource_type").db()?,
            resource_id: r.try_get("resource_id").db()?,
            version_id: r.try_get("version_id").db()?,
            interaction: r.try_get("interaction").db()?,
            created_at: r.try_get("created_at").db()?,
        })
    }};
}

/// The right to deliver one destination's notifications. On PostgreSQL it
/// holds a connection (and the advisory lock on it) until
/// [`OutboxLease::release`] or drop; dropping it without `release` closes
/// the connection, which ends the lock too.
pub struct OutboxLease {
    destination: String,
    hold: Hold,
}

enum Hold {
    Sqlite(sqlx::SqlitePool),
    Postgres(Option<sqlx::pool::PoolConnection<sqlx::Postgres>>),
}

impl OutboxLease {
    /// Up to `limit` of the oldest queued notifications, oldest first.
    pub async fn next(&mut self, limit: usize) -> StoreResult<Vec<OutboxRow>> {
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(1);
        match &mut self.hold {
            Hold::Postgres(Some(conn)) => sqlx::query(SELECT_ROWS)
                .bind(&self.destination)
                .bind(limit)
                .fetch_all(&mut **conn)
                .await
                .db()?
                .iter()
                .map(|r| outbox_row!(r))
                .collect(),
            Hold::Postgres(None) => Err(crate::StoreError::Unavailable(
                "the outbox lease was lost".into(),
            )),
            Hold::Sqlite(pool) => sqlx::query(SELECT_ROWS)
                .bind(&self.destination)
                .bind(limit)
                .fetch_all(&*pool)
                .await
                .db()?
                .iter()
                .map(|r| outbox_row!(r))
                .collect(),
        }
    }

    /// Deletes the notifications numbered `seqs` (delivered).
    pub async fn acknowledge(&mut self, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        match &mut self.hold {
            Hold::Postgres(Some(conn)) => {
                sqlx::query("DELETE FROM subscription_outbox WHERE seq = ANY($1)")
                    .bind(seqs)
                    .execute(&mut **conn)
                    .await
                    .db()?;
                Ok(())
            }
            Hold::Postgres(None) => Err(crate::StoreError::Unavailable(
                "the outbox lease was lost".into(),
            )),
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
                    query.execute(&*pool).await.db()?;
                }
                Ok(())
            }
        }
    }

    /// Gives the lease up (another instance may take it).
    pub async fn release(mut self) {
        if let Hold::Postgres(conn) = &mut self.hold {
            if let Some(mut conn) = conn.take() {
                let unlocked = sqlx::query(END_LEASE)
                    .bind(&self.destination)
                    .execute(&mut *conn)
                    .await;
                if unlocked.is_err() {
                    // The lock ends with the session.
                    drop(conn.detach());
                }
            }
        }
    }
}

impl Drop for OutboxLease {
    fn drop(&mut self) {
        // A lease dropped without `release` (a failed worker): close the
        // connection rather than return it to the pool still locked.
        if let Hold::Postgres(conn) = &mut self.hold {
            if let Some(conn) = conn.take() {
                drop(conn.detach());
            }
        }
    }
}

/// The outbox of subscription notifications.
pub trait Outbox {
    /// The lease of `destination`, or `None` while another worker (of any
    /// instance) holds it.
    fn lease(
        &self,
        destination: &str,
    ) -> impl Future<Output = StoreResult<Option<OutboxLease>>> + Send;

    /// How many notifications of `destination` are queued.
    fn count_events(&self, destination: &str) -> impl Future<Output = StoreResult<i64>> + Send;

    /// Removes the notifications queued for versions of `destination` before
    /// `version` (the version that deleted it); returns how many there were.
    fn drop_events(
        &self,
        destination: &str,
        version: i64,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// The destinations that have queued notifications.
    fn queued_destinations(&self) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// Whether `destination` has a queued notification (one cheap query,
    /// without a lease).
    fn has_events(&self, destination: &str) -> impl Future<Output = StoreResult<bool>> + Send;
}

macro_rules! shared_queries {
    () => {
        async fn count_events(&self, destination: &str) -> StoreResult<i64> {
            sqlx::query(COUNT_EVENTS)
                .bind(destination)
                .fetch_one(self.write_pool())
                .await
                .db()?
                .try_get(0)
                .db()
        }

        async fn drop_events(&self, destination: &str, version: i64) -> StoreResult<u64> {
            let done = sqlx::query(DROP_EVENTS)
                .bind(destination)
                .bind(version)
                .execute(self.write_pool())
                .await
                .db()?;
            Ok(done.rows_affected())
        }

        async fn has_events(&self, destination: &str) -> StoreResult<bool> {
            Ok(sqlx::query(HAS_EVENTS)
                .bind(destination)
                .fetch_optional(self.write_pool())
                .await
                .db()?
                .is_some())
        }

        async fn queued_destinations(&self) -> StoreResult<Vec<String>> {
            let rows = sqlx::query(QUEUED_DESTINATIONS)
                .fetch_all(self.write_pool())
                .await
                .db()?;
            rows.iter().map(|r| r.try_get(0).db()).collect()
        }
    };
}

impl Outbox for PostgresStore {
    async fn lease(&self, destination: &str) -> StoreResult<Option<OutboxLease>> {
        let mut conn = self.outbox_pool().acquire().await.db()?;
        let held: bool = sqlx::query(TRY_LEASE)
            .bind(destination)
            .fetch_one(&mut *conn)
            .await
            .db()?
            .try_get(0)
            .db()?;
        Ok(held.then(|| OutboxLease {
            destination: destination.to_owned(),
            hold: Hold::Postgres(Some(conn)),
        }))
    }

    shared_queries!();
}

impl Outbox for SqliteStore {
    async fn lease(&self, destination: &str) -> StoreResult<Option<OutboxLease>> {
        Ok(Some(OutboxLease {
            destination: destination.to_owned(),
            hold: Hold::Sqlite(self.write_pool().clone()),
        }))
    }

    shared_queries!();
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
    async fn lease(&self, destination: &str) -> StoreResult<Option<OutboxLease>> {
        delegate!(self, s => s.lease(destination))
    }
    async fn count_events(&self, destination: &str) -> StoreResult<i64> {
        delegate!(self, s => s.count_events(destination))
    }
    async fn drop_events(&self, destination: &str, version: i64) -> StoreResult<u64> {
        delegate!(self, s => s.drop_events(destination, version))
    }
    async fn queued_destinations(&self) -> StoreResult<Vec<String>> {
        delegate!(self, s => s.queued_destinations())
    }
    async fn has_events(&self, destination: &str) -> StoreResult<bool> {
        delegate!(self, s => s.has_events(destination))
    }
}
