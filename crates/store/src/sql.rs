//! The SQL store logic, written once and instantiated for each sqlx backend by
//! `sql_backend!`. Both backends run the same statements; what differs (row
//! locking, migration locking, pool set-up) is passed in by the backend module.

/// Generates the storage trait implementations for `$store`, a struct with
/// `reader` and `writer` pools of database `$db` and connection type `$conn`
/// and an async `submit` that commits a write set. `$lock` is the
/// row-locking clause appended to the read-for-update query. `$begin`
/// starts a write transaction of the index rebuild. `$plan_each`
/// says whether a search that combines filters is planned for its values
/// each time rather than kept prepared: PostgreSQL switches a prepared
/// statement to a generic plan after five runs, and a generic plan cannot
/// tell a reference that matches 50 rows from a code that matches 50,000 (a
/// search with one filter has one way in, and skips the planning)
/// (https://www.postgresql.org/docs/current/sql-prepare.html, "Notes").
macro_rules! sql_backend {
    ($store:ident, $db:ty, $conn:ty, $lock:literal, $begin:literal, $plan_each:literal) => {
        use sqlx::Row as _;

        use crate::error::StoreError;
        use crate::model::*;
        use crate::query::{self, Bind};
        use crate::{
            ChangeMarker, ResourceHistory, ResourceRead, ResourceSearch, ResourceWrite, StoreHealth,
            StoreResult,
        };

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

        fn row_to_resource(row: &<$db as sqlx::Database>::Row) -> StoreResult<StoredResource> {
            Ok(StoredResource {
                resource_type: row.try_get("resource_type").db()?,
                id: row.try_get("id").db()?,
                version_id: row.try_get("version_id").db()?,
                last_updated: row.try_get("last_updated").db()?,
                deleted: row.try_get("deleted").db()?,
                body: row.try_get("body").db()?,
            })
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
                    .await.db()?;
            }
            for statement in query::index_inserts(key, resource_type, entries) {
                bind_all(sqlx::query(&statement.text), statement.binds)
                    .execute(&mut *conn)
                    .await.db()?;
            }
            Ok(())
        }

        impl $store {
            /// Closes both pools. (SQLite's writer thread ends once every
            /// handle to the store is dropped.)
            pub async fn close(&self) {
                self.writer.close().await;
                self.reader.close().await;
            }
        }

        impl ResourceRead for $store {
            async fn read(&self, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
                let row = sqlx::query(
                    "SELECT resource_type, id, version_id, last_updated, deleted, body FROM resource \
                     WHERE resource_type = $1 AND id = $2",
                )
                .bind(resource_type)
                .bind(id)
                .fetch_optional(&self.reader)
                .await.db()?;
                row.as_ref().map(row_to_resource).transpose()
            }

            async fn vread(
                &self,
                resource_type: &str,
                id: &str,
                version_id: i64,
            ) -> StoreResult<Option<StoredResource>> {
                let row = sqlx::query(
                    "SELECT resource_type, id, version_id, last_updated, deleted, body FROM resource_history \
                     WHERE resource_type = $1 AND id = $2 AND version_id = $3",
                )
                .bind(resource_type)
                .bind(id)
                .bind(version_id)
                .fetch_optional(&self.reader)
                .await.db()?;
                row.as_ref().map(row_to_resource).transpose()
            }
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

        impl ResourceSearch for $store {
            async fn search(&self, q: SearchQuery) -> StoreResult<SearchPage> {
                let plan = query::search(&q)?;
                // A search that combines filters is planned for its values.
                let prepared = !($plan_each && q.filters.len() > 1);
                let rows = bind_all(sqlx::query(&plan.select.text), plan.select.binds)
                    .persistent(prepared)
                    .fetch_all(&self.reader)
                    .await.db()?;
                let mut in_page = None;
                let mut found = Vec::with_capacity(rows.len());
                for row in &rows {
                    if plan.total == query::Total::InPage {
                        in_page = Some(row.try_get::<i64, _>("total").db()?);
                    }
                    let mut values = Vec::with_capacity(plan.sort_values.len());
                    for (i, kind) in plan.sort_values.iter().enumerate() {
                        let column = format!("s{i}");
                        let column = column.as_str();
                        values.push(match kind {
                            query::SortValue::Text => row.try_get::<Option<String>, _>(column).db()?.into(),
                            query::SortValue::Int => row.try_get::<Option<i64>, _>(column).db()?.into(),
                            query::SortValue::Float => row.try_get::<Option<f64>, _>(column).db()?.into(),
                        });
                    }
                    found.push((row_to_resource(row)?, row.try_get::<i64, _>("res_key").db()?, values));
                }
                let total = match plan.total {
                    query::Total::Skip => None,
                    _ if in_page.is_some() => in_page,
                    // A first page that holds every match is its own count.
                    _ if q.cursor.is_none() && found.len() <= q.count as usize => {
                        Some(found.len() as i64)
                    }
                    query::Total::Count | query::Total::InPage => {
                        let count = query::count(&q);
                        let row = bind_all(sqlx::query(&count.text), count.binds)
                            .persistent(prepared)
                            .fetch_one(&self.reader)
                            .await.db()?;
                        query::counted(q.total, row.try_get::<i64, _>(0).db()?)
                    }
                };
                Ok(query::search_page(&q, plan.backwards, found, total))
            }
        }

        impl ResourceHistory for $store {
            async fn history(&self, q: HistoryQuery) -> StoreResult<HistoryPage> {
                let (select, count) = query::history(&q)?;
                let rows = bind_all(sqlx::query(&select.text), select.binds)
                    .fetch_all(&self.reader)
                    .await.db()?;
                let mut entries = Vec::with_capacity(rows.len());
                let mut last_seq = None;
                for row in rows.iter().take(q.count as usize) {
                    entries.push(row_to_resource(row)?);
                    last_seq = Some(row.try_get::<i64, _>("seq").db()?);
                }
                let next = if rows.len() > q.count as usize {
                    last_seq.map(query::history_cursor)
                } else {
                    None
                };
                // A first page that holds every version is its own count.
                let total = if q.cursor.is_none() && next.is_none() {
                    Some(entries.len() as i64)
                } else {
                    let row = bind_all(sqlx::query(&count.text), count.binds)
                        .fetch_one(&self.reader)
                        .await.db()?;
                    query::counted(TotalMode::Bounded, row.try_get::<i64, _>(0).db()?)
                };
                Ok(HistoryPage {
                    entries,
                    total,
                    next,
                })
            }
        }

        impl ChangeMarker for $store {
            async fn latest_change(&self, resource_types: &[&str]) -> StoreResult<i64> {
                let mut sql = String::from(
                    "SELECT COALESCE(MAX(seq), 0) FROM resource_history WHERE resource_type IN (",
                );
                for i in 0..resource_types.len() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("${}", i + 1));
                }
                sql.push(')');
                let mut q = sqlx::query(&sql);
                for t in resource_types {
                    q = q.bind(*t);
                }
                let row = q.fetch_one(&self.reader).await.db()?;
                row.try_get::<i64, _>(0).db()
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
                .await.db()?;
                let Some(key) = row.map(|r| r.try_get::<i64, _>(0)).transpose().db()? else {
                    return Ok(false);
                };
                write_index(&mut tx, key, resource_type, &entries, true).await?;
                tx.commit().await.db()?;
                Ok(true)
            }

            async fn index_version(&self) -> StoreResult<Option<String>> {
                let row = sqlx::query("SELECT value FROM fhirbox_setting WHERE name = 'search-index'")
                    .fetch_optional(&self.reader)
                    .await.db()?;
                row.map(|r| r.try_get::<String, _>(0)).transpose().db()
            }

            async fn analyze(&self) -> StoreResult<()> {
                sqlx::query("ANALYZE").execute(&self.writer).await.db()?;
                Ok(())
            }

            async fn set_index_version(&self, version: &str) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO fhirbox_setting (name, value) VALUES ('search-index', $1) \
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(version)
                .execute(&self.writer)
                .await.db()?;
                Ok(())
            }
        }

        impl StoreHealth for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.reader).await.db()?;
                Ok(())
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
                .await.db()?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await.db()?;
            if let Some(lock) = lock {
                sqlx::query(lock).execute(&mut *tx).await.db()?;
            }
            let applied: Vec<i64> = sqlx::query("SELECT version FROM fhirbox_schema")
                .fetch_all(&mut *tx)
                .await.db()?
                .iter()
                .map(|r| r.try_get::<i64, _>(0))
                .collect::<Result<_, _>>().db()?;
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
                    .await.db()?;
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
                .map(|r| Ok((row_to_resource(r)?, r.try_get::<i64, _>("res_key").db()?)))
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
            rows.iter().map(row_to_resource).collect()
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
    IndexEntry, Matching, SearchQuery, StoredResource, TotalMode, WriteKind, WriteOp, WriteOutcome,
};

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
    // The stored text and the index rows of the final body.
    let finish = |body: serde_json::Value| -> Result<(String, Vec<IndexEntry>), StoreError> {
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
        Ok((text, entries))
    };
    let not_found = || StoreError::NotFound {
        resource_type: rt.into(),
        id: id.into(),
    };
    let (deleted, (body, entries)) = match &op.kind {
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
                }))
            }
            Some(_) => (true, (String::new(), Vec::new())),
        },
    };
    Ok(Step::Store(Planned {
        outcome: WriteOutcome {
            created: live.is_none() && !deleted,
            changed: true,
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
