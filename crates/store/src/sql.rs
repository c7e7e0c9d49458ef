//! The SQL store logic both backends share: the decisions of a write, the
//! decoding of result rows and the paging of searches and history (plain
//! functions), and the sqlx code of writes, index rebuilds and migrations
//! (`sql_backend!`, `sql_writes!`), instantiated by each backend module.
//! Both backends run the same statements (built by `query`); what differs
//! (row locking, migration locking, the driver of reads) is the backend
//! module's.

/// Generates the write-side trait implementations for `$store`, a struct
/// with a `writer` pool of database `$db` (connection type `$conn`), an
/// async `submit` that commits a write set and an async `setting` that
/// reads a row of `fhirbox_setting`. `$lock` is the row-locking clause
/// appended to the read-for-update query. `$begin` starts a write
/// transaction of the index rebuild.
macro_rules! sql_backend {
    ($store:ident, $db:ty, $conn:ty, $lock:literal, $begin:literal) => {
        use sqlx::Row as _;

        use crate::error::StoreError;
        use crate::model::*;
        use crate::query::{self, Bind};
        use crate::{ResourceWrite, StoreResult};

        type Query<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>;

        fn bind_all(mut q: Query<'_>, binds: Vec<Bind>) -> Query<'_> {
            for b in binds {
                q = match b {
                    Bind::Text(s) => q.bind(s),
                    Bind::Int(i) => q.bind(i),
                    Bind::Float(f) => q.bind(f),
                    Bind::NullText => q.bind(None::<String>),
                    Bind::NullInt => q.bind(None::<i64>),
                    Bind::NullFloat => q.bind(None::<f64>),
                };
            }
            q
        }

        /// Replaces the index rows of the resource row `key`.
        async fn write_index(
            conn: &mut $conn,
            key: i64,
            resource_type: &str,
            entries: &[IndexEntry],
            had_rows: bool,
        ) -> StoreResult<()> {
            if had_rows {
                sqlx::query("DELETE FROM search_index WHERE res_key = $1")
                    .bind(key)
                    .execute(&mut *conn)
                    .await
                    .db()?;
            }
            for statement in query::index_inserts(key, resource_type, entries) {
                bind_all(sqlx::query(&statement.text), statement.binds)
                    .execute(&mut *conn)
                    .await
                    .db()?;
            }
            Ok(())
        }

        impl ResourceWrite for $store {
            async fn write(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
                let mut outcomes = self.submit(vec![op]).await?;
                outcomes
                    .pop()
                    .ok_or_else(|| StoreError::Corrupt("write produced no outcome".into()))
            }

            async fn write_all(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
                self.submit(ops).await
            }
        }

        impl crate::SearchIndex for $store {
            async fn replace_index(
                &self,
                resource_type: &str,
                id: &str,
                version_id: i64,
                entries: Vec<IndexEntry>,
            ) -> StoreResult<bool> {
                let mut tx = self.writer.begin_with($begin).await.db()?;
                // Locked like a write's read, so a write running beside the
                // rebuild either waits for it (and then replaces the rebuilt
                // rows) or goes first (and the rebuild, built from an older
                // version, stops): only the live version of a resource has
                // index rows (`query::rows_decide`).
                let row = sqlx::query(concat!(
                    "SELECT res_key FROM resource WHERE resource_type = $1 AND id = $2 ",
                    "AND version_id = $3 AND deleted = FALSE ",
                    $lock
                ))
                .bind(resource_type)
                .bind(id)
                .bind(version_id)
                .fetch_optional(&mut *tx)
                .await
                .db()?;
                let Some(key) = row.map(|r| r.try_get::<i64, _>(0)).transpose().db()? else {
                    return Ok(false);
                };
                write_index(&mut tx, key, resource_type, &entries, true).await?;
                tx.commit().await.db()?;
                Ok(true)
            }

            async fn index_version(&self) -> StoreResult<Option<String>> {
                self.setting(crate::sql::INDEX_VERSION).await
            }

            async fn analyze(&self) -> StoreResult<()> {
                sqlx::query("ANALYZE").execute(&self.writer).await.db()?;
                Ok(())
            }

            async fn set_index_version(&self, version: &str) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO fhirbox_setting (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(crate::sql::INDEX_VERSION)
                .bind(version)
                .execute(&self.writer)
                .await
                .db()?;
                Ok(())
            }
        }

        impl crate::GrantStore for $store {
            async fn put_grant(&self, grant: crate::StoredGrant, now: i64) -> StoreResult<()> {
                sqlx::query("DELETE FROM auth_grant WHERE expires_at < $1")
                    .bind(now)
                    .execute(&self.writer)
                    .await
                    .db()?;
                sqlx::query(
                    "INSERT INTO auth_grant (digest, kind, family, body, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(grant.digest)
                .bind(grant.kind)
                .bind(grant.family)
                .bind(grant.body)
                .bind(grant.expires_at)
                .execute(&self.writer)
                .await
                .db()?;
                Ok(())
            }

            async fn redeem_grant(
                &self,
                digest: &str,
                kind: &str,
                now: i64,
            ) -> StoreResult<crate::Redeemed> {
                let used = format!("{kind}-used");
                let row = sqlx::query(
                    "UPDATE auth_grant SET kind = $3 WHERE digest = $1 AND kind = $2 \
                     RETURNING family, body, expires_at",
                )
                .bind(digest)
                .bind(kind)
                .bind(&used)
                .fetch_optional(&self.writer)
                .await
                .db()?;
                if let Some(row) = row {
                    let grant = crate::StoredGrant {
                        digest: digest.to_owned(),
                        kind: kind.to_owned(),
                        family: row.try_get(0).db()?,
                        body: row.try_get(1).db()?,
                        expires_at: row.try_get(2).db()?,
                    };
                    if grant.expires_at <= now {
                        return Ok(crate::Redeemed::Unknown);
                    }
                    return Ok(crate::Redeemed::Fresh(grant));
                }
                let row = sqlx::query("SELECT family FROM auth_grant WHERE digest = $1 AND kind = $2")
                    .bind(digest)
                    .bind(&used)
                    .fetch_optional(&self.writer)
                    .await
                    .db()?;
                Ok(match row {
                    Some(row) => crate::Redeemed::Used {
                        family: row.try_get(0).db()?,
                    },
                    None => crate::Redeemed::Unknown,
                })
            }

            async fn prune_family(
                &self,
                family: &str,
                kind: &str,
                keep: &str,
            ) -> StoreResult<bool> {
                sqlx::query("DELETE FROM auth_grant WHERE family = $1 AND kind = $2 AND digest <> $3")
                    .bind(family)
                    .bind(kind)
                    .bind(keep)
                    .execute(&self.writer)
                    .await
                    .db()?;
                let kept = sqlx::query("SELECT 1 FROM auth_grant WHERE digest = $1")
                    .bind(keep)
                    .fetch_optional(&self.writer)
                    .await
                    .db()?;
                Ok(kept.is_some())
            }

            async fn revoke_family(&self, family: &str) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM auth_grant WHERE family = $1")
                    .bind(family)
                    .execute(&self.writer)
                    .await
                    .db()?;
                Ok(done.rows_affected())
            }
        }

        /// Applies the migrations in `list` that are not yet recorded.
        async fn run_migrations(
            conn: &mut $conn,
            list: &[(i64, &[&str])],
            lock: Option<&str>,
        ) -> StoreResult<()> {
            sqlx::query(crate::migrate::CREATE_SCHEMA_TABLE)
                .execute(&mut *conn)
                .await
                .db()?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await.db()?;
            if let Some(lock) = lock {
                sqlx::query(lock).execute(&mut *tx).await.db()?;
            }
            let applied: Vec<i64> = sqlx::query("SELECT version FROM fhirbox_schema")
                .fetch_all(&mut *tx)
                .await
                .db()?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()
                .db()?;
            for (version, statements) in list {
                if applied.contains(version) {
                    continue;
                }
                for statement in *statements {
                    sqlx::query(statement).execute(&mut *tx).await.db()?;
                }
                sqlx::query("INSERT INTO fhirbox_schema (version, applied_at) VALUES ($1, $2)")
                    .bind(*version)
                    .bind(crate::instant::now_micros())
                    .execute(&mut *tx)
                    .await
                    .db()?;
                tracing::info!(version, "applied schema migration");
            }
            tx.commit().await.db()?;
            Ok(())
        }
    };
}

pub(crate) use sql_backend;

/// The write path on sqlx, for PostgreSQL, where writes run side by side on
/// the pool's connections (SQLite's one writer is `sqlite_writer`, on a
/// thread of its own). Expanded beside `sql_backend!` in the same module.
/// `$lock` is the row-locking clause of the read-for-update query. `$key`
/// is the SQL expression that numbers a new resource row (`res_key`).
/// `$begin` starts a write transaction. `$match_lock` (bound to the
/// criteria text) makes conditional writes with equal criteria wait for
/// each other before they search.
macro_rules! sql_writes {
    ($db:ty, $conn:ty, $lock:literal, $key:literal, $begin:literal, $match_lock:expr) => {
        /// The current row (locked for the write) and its `res_key`.
        async fn select_current(
            conn: &mut $conn,
            resource_type: &str,
            id: &str,
        ) -> StoreResult<Option<(StoredResource, i64)>> {
            let row = sqlx::query(concat!(
                "SELECT resource_type, id, version_id, last_updated, deleted, body, res_key FROM resource ",
                "WHERE resource_type = $1 AND id = $2 ",
                $lock
            ))
            .bind(resource_type)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await.db()?;
            row.as_ref()
                .map(|r| Ok((crate::sql::stored(r)?, r.try_get::<i64, _>("res_key").db()?)))
                .transpose()
        }

        /// Takes the criteria locks of every conditional write of a set up
        /// front, in one order, so that two sets with the same criteria in
        /// different orders wait for each other instead of deadlocking.
        async fn lock_criteria(conn: &mut $conn, ops: &[WriteOp]) -> StoreResult<()> {
            let lock: Option<&'static str> = $match_lock;
            let Some(lock) = lock else {
                return Ok(());
            };
            let mut criteria: Vec<&str> = ops
                .iter()
                .filter_map(|op| op.matching.as_ref().map(|m| m.criteria.as_str()))
                .collect();
            criteria.sort_unstable();
            criteria.dedup();
            for c in criteria {
                sqlx::query(lock).bind(c).execute(&mut *conn).await.db()?;
            }
            Ok(())
        }

        /// The first two current matches of a conditional write's criteria,
        /// searched in the write's transaction after waiting for writes with
        /// the same criteria.
        async fn find_matches(conn: &mut $conn, matching: &Matching) -> StoreResult<Vec<StoredResource>> {
            let lock: Option<&'static str> = $match_lock;
            if let Some(lock) = lock {
                sqlx::query(lock)
                    .bind(&matching.criteria)
                    .execute(&mut *conn)
                    .await.db()?;
            }
            let plan = query::search(&crate::sql::match_query(matching))?;
            let rows = bind_all(sqlx::query(&plan.select.text), plan.select.binds)
                .persistent(false)
                .fetch_all(&mut *conn)
                .await.db()?;
            rows.iter().map(crate::sql::stored).collect()
        }

        /// Binds a row's six columns, in `UPDATE_ROW`'s and the insert's order.
        fn bind_row<'q>(q: Query<'q>, r: &'q StoredResource) -> Query<'q> {
            q.bind(&r.resource_type)
                .bind(&r.id)
                .bind(r.version_id)
                .bind(r.last_updated)
                .bind(r.deleted)
                .bind(&r.body)
        }

        /// Applies one write inside an open transaction. Every refusal
        /// comes before the first statement that writes (`crate::sql::conditional`
        /// and `crate::sql::decide`).
        async fn apply(conn: &mut $conn, op: &WriteOp) -> StoreResult<WriteOutcome> {
            let mut matched = None;
            if let Some(matching) = &op.matching {
                let found = find_matches(conn, matching).await?;
                match crate::sql::conditional(op, matching, found)? {
                    crate::sql::Conditional::Proceed => {}
                    crate::sql::Conditional::Target(found) => matched = Some(found),
                    crate::sql::Conditional::Answer(outcome) => return Ok(outcome),
                }
            }
            let id = matched.as_ref().map_or(op.id.as_str(), |found| found.id.as_str());
            let mut unread = crate::sql::inserts_unread(op);
            loop {
                let selected = if std::mem::take(&mut unread) {
                    None
                } else {
                    select_current(conn, &op.resource_type, id).await?
                };
                let plan = match crate::sql::decide(op, id, matched.as_ref(), selected)? {
                    crate::sql::Step::Answer(outcome) => return Ok(outcome),
                    crate::sql::Step::Store(plan) => plan,
                };
                let r = &plan.outcome.resource;
                let key = match plan.key {
                    None => {
                        let insert = sqlx::query(concat!(
                            "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, body, res_key) \
                             VALUES ($1, $2, $3, $4, $5, $6, ", $key, ") ON CONFLICT (resource_type, id) DO NOTHING \
                             RETURNING res_key",
                        ));
                        let inserted = bind_row(insert, r)
                            .fetch_optional(&mut *conn)
                            .await.db()?;
                        match inserted {
                            Some(row) => row.try_get::<i64, _>(0).db()?,
                            // The id was taken after all (a concurrent transaction
                            // created it first); the locking read now waits for it
                            // and takes the update path.
                            None => continue,
                        }
                    }
                    Some(key) => {
                        bind_row(sqlx::query(crate::sql::UPDATE_ROW), r)
                            .execute(&mut *conn)
                            .await.db()?;
                        key
                    }
                };
                write_index(conn, key, &r.resource_type, &plan.entries, plan.key.is_some()).await?;
                for event in &plan.events {
                    sqlx::query(crate::sql::INSERT_EVENT)
                        .bind(&event.destination)
                        .bind(&event.topic)
                        .bind(&r.resource_type)
                        .bind(&r.id)
                        .bind(r.version_id)
                        .bind(event.interaction)
                        .bind(r.last_updated)
                        .bind(event.destination_version)
                        .execute(&mut *conn)
                        .await.db()?;
                }
                return Ok(plan.outcome);
            }
        }

        /// Applies `ops` in one transaction of its own, all or nothing,
        /// retrying a few times when the database reports contention.
        async fn write_set(pool: &sqlx::Pool<$db>, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let result: StoreResult<Vec<WriteOutcome>> = async {
                    let mut tx = pool.begin_with($begin).await.db()?;
                    lock_criteria(&mut tx, ops).await?;
                    let mut outcomes = Vec::with_capacity(ops.len());
                    for op in ops {
                        outcomes.push(apply(&mut tx, op).await?);
                    }
                    tx.commit().await.db()?;
                    Ok(outcomes)
                }
                .await;
                match result {
                    Err(StoreError::Contention) if attempt < crate::sql::CONTENTION_RETRIES => {
                        tracing::debug!(attempt, "write contention; retrying");
                    }
                    other => return other,
                }
            }
        }
    };
}

pub(crate) use sql_writes;

use crate::error::{Refusal, StoreError};
use crate::model::{
    Change, HistoryPage, HistoryQuery, IndexEntry, Matching, OutboxEvent, SearchQuery,
    StoredResource, TotalMode, WriteKind, WriteOp, WriteOutcome,
};
use crate::query::{self, Hit, SearchPlan, SortValue, Sql};
use crate::StoreResult;

/// Queues one notification in the outbox (docs/subscriptions.md), in the
/// change's transaction; the same statement on both backends.
pub(crate) const INSERT_EVENT: &str = "INSERT INTO subscription_outbox \
     (destination, topic, resource_type, resource_id, version_id, interaction, created_at, destination_version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The `fhirbox_setting` row naming the index definitions the stored index
/// rows were built from.
pub(crate) const INDEX_VERSION: &str = "search-index";

/// The current row of a resource; binds: type, id.
pub(crate) const READ_ROW: &str =
    "SELECT resource_type, id, version_id, last_updated, deleted, body FROM resource \
     WHERE resource_type = $1 AND id = $2";

/// A version of a resource; binds: type, id, version.
pub(crate) const READ_VERSION: &str =
    "SELECT resource_type, id, version_id, last_updated, deleted, body FROM resource_history \
     WHERE resource_type = $1 AND id = $2 AND version_id = $3";

/// A row of `fhirbox_setting`; binds: name.
pub(crate) const READ_SETTING: &str = "SELECT value FROM fhirbox_setting WHERE name = $1";

/// The newest change to resources of the types bound as `$1`, `$2`, … (one
/// per type): the largest history sequence number, 0 for none.
/// The change marker of some types: the newest history row's `seq` plus
/// the number of their rows among the last 10,000 `seq`s. History is only
/// ever appended, so every change makes the number grow. The count matters
/// on PostgreSQL, where `seq` is taken when a row is inserted, not when it
/// commits: a version that commits after a newer one was seen leaves the
/// largest `seq` as it was, but not the count (unless 10,000 other history
/// rows were written while it was in flight). The window keeps the count
/// cheap however long the history.
///
/// Each type's newest row is its own lookup on `resource_history_by_type`
/// (`resource_type, seq`): a `MAX(seq)` over `resource_type IN (…)` walks
/// the whole history on PostgreSQL, which made every write slower as the
/// history grew.
pub(crate) fn latest_change_sql(types: usize) -> String {
    let list = (1..=types)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let per_type = (1..=types)
        .map(|i| {
            format!(
                "SELECT (SELECT MAX(seq) FROM resource_history WHERE resource_type = ${i}) AS one"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "SELECT latest.m + (SELECT COUNT(*) FROM resource_history \
         WHERE resource_type IN ({list}) AND seq > latest.m - 10000) \
         FROM (SELECT COALESCE(MAX(one), 0) AS m FROM ({per_type}) AS per_type) AS latest"
    )
}

/// A result row's columns by name, as each backend's driver reads them.
pub(crate) trait Columns {
    fn text(&self, name: &str) -> StoreResult<Option<String>>;
    fn int(&self, name: &str) -> StoreResult<Option<i64>>;
    fn float(&self, name: &str) -> StoreResult<Option<f64>>;
    fn flag(&self, name: &str) -> StoreResult<bool>;
}

fn required<T>(value: Option<T>, name: &str) -> StoreResult<T> {
    value.ok_or_else(|| StoreError::Corrupt(format!("a stored row has no {name}")))
}

/// The resource of a row holding `query::COLUMNS`.
pub(crate) fn stored(row: &impl Columns) -> StoreResult<StoredResource> {
    Ok(StoredResource {
        resource_type: required(row.text("resource_type")?, "resource_type")?,
        id: required(row.text("id")?, "id")?,
        version_id: required(row.int("version_id")?, "version_id")?,
        last_updated: required(row.int("last_updated")?, "last_updated")?,
        deleted: row.flag("deleted")?,
        body: required(row.text("body")?, "body")?,
    })
}

/// A row of a search's page (`SearchPlan::select`): the resource, its
/// storage key and sort values, and the total it carries under
/// `Total::InPage`.
pub(crate) fn hit(row: &impl Columns, plan: &SearchPlan) -> StoreResult<(Hit, Option<i64>)> {
    let in_page = match plan.total {
        query::Total::InPage => Some(required(row.int("total")?, "total")?),
        _ => None,
    };
    let mut values = Vec::with_capacity(plan.sort_values.len());
    for (i, kind) in plan.sort_values.iter().enumerate() {
        let column = format!("s{i}");
        values.push(match kind {
            SortValue::Text => row.text(&column)?.into(),
            SortValue::Int => row.int(&column)?.into(),
            SortValue::Float => row.float(&column)?.into(),
        });
    }
    let key = required(row.int("res_key")?, "res_key")?;
    Ok(((stored(row)?, key, values), in_page))
}

/// Where a search's total comes from once its page is read.
pub(crate) enum TotalFrom {
    Known(Option<i64>),
    /// The count statement, whose result goes through `query::counted`.
    Count(Sql),
}

/// The total of a search whose page holds `found` rows (one more than the
/// page, when there are more), and `in_page` when a row carried it.
pub(crate) fn total_from(
    q: &SearchQuery,
    plan: &SearchPlan,
    found: usize,
    in_page: Option<i64>,
) -> TotalFrom {
    match plan.total {
        query::Total::Skip => TotalFrom::Known(None),
        _ if in_page.is_some() => TotalFrom::Known(in_page),
        // A first page that holds every match is its own count.
        _ if q.cursor.is_none() && found <= q.count as usize => {
            TotalFrom::Known(Some(found as i64))
        }
        query::Total::Count | query::Total::InPage => TotalFrom::Count(query::count(q)),
    }
}

/// A page of history from the rows of `query::history`'s select (one more
/// than the page, when there are more), each with its `seq`, and whether
/// its total is still to be counted (`counted_history` sets it): a first
/// page that holds every version is its own count.
pub(crate) fn history_page(
    q: &HistoryQuery,
    rows: Vec<(StoredResource, i64)>,
) -> (HistoryPage, bool) {
    let more = rows.len() > q.count as usize;
    let mut entries = Vec::with_capacity(rows.len().min(q.count as usize));
    let mut last_seq = None;
    for (resource, seq) in rows.into_iter().take(q.count as usize) {
        entries.push(resource);
        last_seq = Some(seq);
    }
    let next = if more {
        last_seq.map(query::history_cursor)
    } else {
        None
    };
    let to_count = q.cursor.is_some() || next.is_some();
    let total = (!to_count).then_some(entries.len() as i64);
    (
        HistoryPage {
            entries,
            total,
            next,
        },
        to_count,
    )
}

/// The total of a history page from its count statement's result.
pub(crate) fn counted_history(page: &mut HistoryPage, count: i64) {
    page.total = query::counted(TotalMode::Bounded, count);
}

/// How many times a write set is tried when the database reports contention
/// or a conditional write's match changed between its search and its write.
pub(crate) const CONTENTION_RETRIES: usize = 3;

/// Stores a new version over a resource's row; binds: type, id, version,
/// last updated, deleted, body (as the insert's first six).
pub(crate) const UPDATE_ROW: &str =
    "UPDATE resource SET version_id = $3, last_updated = $4, deleted = $5, body = $6 \
     WHERE resource_type = $1 AND id = $2";

/// The search of a conditional write: two matches at most, no total.
pub(crate) fn match_query(matching: &Matching) -> SearchQuery {
    SearchQuery {
        count: 1,
        cursor: None,
        total: TotalMode::None,
        ..matching.query.clone()
    }
}

/// Whether a write may insert without reading the current row first: a
/// create under an id the server has just chosen. The insert's conflict
/// clause tells whether the id was taken after all, and then the write goes
/// round again with the (locking) read.
pub(crate) fn inserts_unread(op: &WriteOp) -> bool {
    matches!(op.kind, WriteKind::Create(_)) && op.if_match.is_none()
}

/// What a write stores, decided before anything is written.
pub(crate) struct Planned {
    /// The answer once stored; its resource is the row to store.
    pub outcome: WriteOutcome,
    /// The index rows of the stored body (none for a deletion).
    pub entries: Vec<IndexEntry>,
    /// The key of the row to store over; `None`: insert a new row.
    pub key: Option<i64>,
    /// The notifications the change queues (`WriteOp::notify`).
    pub events: Vec<OutboxEvent>,
}

/// What a write does once the current row is known.
pub(crate) enum Step {
    /// Write nothing and answer this (deleting what is deleted already).
    Answer(WriteOutcome),
    Store(Planned),
}

/// Decides a write from the current row of its resource (with its key),
/// if any, and the match a conditional write found. Every refusal of a
/// write is made here or in `conditional`, before the first statement that
/// writes: a refused
/// write has changed nothing, which lets the SQLite writer commit a lone
/// write without a savepoint.
pub(crate) fn decide(
    op: &WriteOp,
    id: &str,
    matched: Option<&StoredResource>,
    selected: Option<(StoredResource, i64)>,
) -> Result<Step, StoreError> {
    let rt = op.resource_type.as_str();
    let (current, key) = match selected {
        Some((row, key)) => (Some(row), Some(key)),
        None => (None, None),
    };
    // The match was searched without a lock: a write to it since then
    // makes this attempt void, and the write set is retried.
    if let Some(found) = matched {
        let live = current
            .as_ref()
            .filter(|c| !c.deleted)
            .map(|c| c.version_id);
        if live != Some(found.version_id) {
            return Err(StoreError::Contention);
        }
    }
    if let Some(expected) = op.if_match {
        let live_version = current
            .as_ref()
            .filter(|c| !c.deleted)
            .map(|c| c.version_id);
        if live_version != Some(expected) {
            return Err(StoreError::VersionConflict {
                resource_type: rt.into(),
                id: id.into(),
                expected,
                current: current.as_ref().map(|c| c.version_id),
            });
        }
    }
    let live = current.as_ref().filter(|c| !c.deleted);
    let next_version = current.as_ref().map_or(1, |c| c.version_id + 1);
    let now = crate::instant::now_micros().max(current.as_ref().map_or(0, |c| c.last_updated));
    // The notifications of the change.
    let events = |current: Option<&serde_json::Value>| -> Vec<OutboxEvent> {
        op.notify.as_ref().map_or_else(Vec::new, |notify| {
            notify(&Change {
                resource_type: rt,
                id,
                previous: live,
                current,
            })
        })
    };
    // The stored text, the index rows and the notifications of the final body.
    type Finished = (String, Vec<IndexEntry>, Vec<OutboxEvent>);
    let finish = |body: serde_json::Value| -> Result<Finished, StoreError> {
        let body = match &op.finalize {
            Some(f) => f(body, live).map_err(StoreError::Rejected)?,
            None => body,
        };
        let body = finalize_body(rt, id, next_version, now, body)?;
        let entries = op
            .index
            .as_ref()
            .map(|index| index(rt, &body))
            .unwrap_or_default();
        let text = serde_json::to_string(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((text, entries, events(Some(&body))))
    };
    let not_found = || StoreError::NotFound {
        resource_type: rt.into(),
        id: id.into(),
    };
    let (deleted, (body, entries, events)) = match &op.kind {
        WriteKind::Create(body) => {
            if live.is_some() {
                return Err(StoreError::AlreadyExists {
                    resource_type: rt.into(),
                    id: id.into(),
                });
            }
            (false, finish(body.clone())?)
        }
        WriteKind::Put(body) => (false, finish(body.clone())?),
        WriteKind::Modify(transform) => {
            let existing = match &current {
                None => return Err(not_found()),
                Some(c) if c.deleted => {
                    return Err(StoreError::Gone {
                        resource_type: rt.into(),
                        id: id.into(),
                        version_id: c.version_id,
                    })
                }
                Some(c) => c,
            };
            let body = transform(existing).map_err(StoreError::Rejected)?;
            (false, finish(body)?)
        }
        WriteKind::Delete => match &current {
            None => return Err(not_found()),
            Some(c) if c.deleted => {
                return Ok(Step::Answer(WriteOutcome {
                    resource: c.clone(),
                    created: false,
                    changed: false,
                    notifications: Vec::new(),
                }))
            }
            Some(_) => (true, (String::new(), Vec::new(), events(None))),
        },
    };
    // Outbox rows go in with the write; the others come back with it.
    let (events, notifications): (Vec<OutboxEvent>, Vec<OutboxEvent>) =
        events.into_iter().partition(|e| e.durable);
    Ok(Step::Store(Planned {
        outcome: WriteOutcome {
            created: live.is_none() && !deleted,
            changed: true,
            notifications,
            resource: StoredResource {
                resource_type: rt.into(),
                id: id.into(),
                version_id: next_version,
                last_updated: now,
                deleted,
                body,
            },
        },
        entries,
        key,
        events,
    }))
}

/// Sets `id` and `meta.versionId`/`meta.lastUpdated`, keeping every other
/// meta element, with `resourceType`, `id` and `meta` first.
pub(crate) fn finalize_body(
    resource_type: &str,
    id: &str,
    version_id: i64,
    last_updated: i64,
    body: serde_json::Value,
) -> Result<serde_json::Value, StoreError> {
    let serde_json::Value::Object(mut fields) = body else {
        return Err(StoreError::Corrupt(
            "resource body is not a JSON object".into(),
        ));
    };
    let mut meta = match fields.shift_remove("meta") {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut ordered_meta = serde_json::Map::new();
    ordered_meta.insert("versionId".into(), version_id.to_string().into());
    ordered_meta.insert(
        "lastUpdated".into(),
        crate::instant::format_micros(last_updated).into(),
    );
    ordered_meta.extend(meta);
    fields.shift_remove("resourceType");
    fields.shift_remove("id");
    let mut out = serde_json::Map::with_capacity(fields.len() + 3);
    out.insert("resourceType".into(), resource_type.into());
    out.insert("id".into(), id.into());
    out.insert("meta".into(), serde_json::Value::Object(ordered_meta));
    out.extend(fields);
    Ok(serde_json::Value::Object(out))
}

/// What a conditional write does once its criteria are searched
/// (R4 §3.1.0.8, docs/search.md "Conditional interactions").
pub(crate) enum Conditional {
    /// Write as asked, with the op's own id.
    Proceed,
    /// Write to the one match (its current version as the search saw it).
    Target(StoredResource),
    /// Write nothing and answer this (a conditional create's match).
    Answer(WriteOutcome),
}

/// Decides a conditional write from the first two matches of its criteria.
pub(crate) fn conditional(
    op: &WriteOp,
    matching: &Matching,
    found: Vec<StoredResource>,
) -> Result<Conditional, StoreError> {
    let resource_type = op.resource_type.clone();
    let criteria = matching.criteria.clone();
    if found.len() > 1 {
        return Err(StoreError::MultipleMatches {
            resource_type,
            criteria,
        });
    }
    if let Some(expected) = &matching.expected {
        if found.first().map(|r| &r.id) != expected.as_ref() {
            return Err(StoreError::MatchChanged {
                resource_type,
                criteria,
            });
        }
    }
    // An update, patch or delete writes a resource it learns of only now:
    // the caller decides whether it may.
    let allowed = |id: &str| match &matching.check_target {
        Some(check) => check(id).map_err(StoreError::Rejected),
        None => Ok(()),
    };
    let body_id = |body: &serde_json::Value| {
        body.get("id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    match (&op.kind, found.into_iter().next()) {
        (WriteKind::Create(_), None) => Ok(Conditional::Proceed),
        (WriteKind::Create(_), Some(existing)) if matching.answer_existing => {
            Ok(Conditional::Answer(WriteOutcome {
                resource: existing,
                created: false,
                changed: false,
                notifications: Vec::new(),
            }))
        }
        (WriteKind::Create(_), Some(_)) => Err(StoreError::MatchAppeared {
            resource_type,
            criteria,
        }),
        // A body id with no match would write that id whatever it holds,
        // past access rules that name ids: it is refused instead.
        (WriteKind::Put(body), None) => match body_id(body) {
            Some(id) => Err(StoreError::Rejected(
                Refusal::malformed(format!(
                    "no {resource_type} matches {criteria}, and the body names id {id:?}; to create or replace {resource_type}/{id}, PUT to that URL"
                ))
                .at(format!("{resource_type}.id")),
            )),
            None => allowed(&op.id).map(|()| Conditional::Proceed),
        },
        (WriteKind::Put(body), Some(found)) => match body_id(body) {
            Some(id) if id != found.id => Err(StoreError::Rejected(
                Refusal::malformed(format!(
                    "the body names id {id:?} but the resource matching {criteria} is {resource_type}/{}",
                    found.id
                ))
                .at(format!("{resource_type}.id")),
            )),
            _ => allowed(&found.id).map(|()| Conditional::Target(found)),
        },
        (WriteKind::Modify(_) | WriteKind::Delete, None) => Err(StoreError::NoMatch {
            resource_type,
            criteria,
        }),
        (WriteKind::Modify(_) | WriteKind::Delete, Some(found)) => {
            allowed(&found.id).map(|()| Conditional::Target(found))
        }
    }
}
