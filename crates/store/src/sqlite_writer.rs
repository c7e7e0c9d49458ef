//! SQLite's one writer: a thread of its own that owns the write connection
//! and runs each group of queued writes start to finish.
//!
//! sqlx runs every SQLite statement on a worker thread of the connection and
//! hands it over and back through channels: two thread switches per
//! statement, and a create is four statements or more. On this project's
//! 2-core machines a create spent about 30 thread switches per request and
//! a read about 6, and the switches took more of the processor than SQLite
//! itself (`perf`, bench/README.md). Here the statements of a whole group
//! run on the thread that holds the connection, through rusqlite, so a
//! write crosses threads twice: to the writer and back. Reads run on
//! rusqlite connections of their own (`sqlite_reader`), and the decisions
//! of a write (`crate::sql::decide`, `conditional`, the SQL of searches and
//! index rows) are the same code the PostgreSQL backend runs.
//!
//! Writes that queue up while the writer is busy are committed in one
//! transaction (group commit); a write set of several writes sits in a
//! savepoint of its own, so it still succeeds or fails alone, and a caller
//! hears of success only once its write is committed.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use rusqlite::types::{ToSql, Value};
use rusqlite::{Connection, Statement, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::error::{DbResult, StoreError};
use crate::model::{IndexEntry, Matching, StoredResource, WriteOp, WriteOutcome};
use crate::query::{self, Bind};
use crate::sql::{Conditional, Step};
use crate::StoreResult;

/// The most write sets one transaction commits together.
const MAX_GROUP: usize = 32;
/// A write set of more writes than this is committed in a transaction of
/// its own. In a savepoint, SQLite walks the savepoint's in-memory journal
/// from its start at the end of every statement (`memjrnlTruncate` in
/// SQLite's memjournal.c), so a large write set there costs the square of
/// its size: a 2,000-entry Synthea bundle spent more than half its time so.
pub(crate) const MAX_GROUPED_OPS: usize = 16;
/// A write connection's page cache, in KiB (64 MiB): it holds a whole
/// group of writes (a large transaction bundle dirties tens of thousands of
/// index pages); with SQLite's default of 2 MiB it spills dirty pages to the
/// WAL mid-transaction and reads the same pages back
/// (https://www.sqlite.org/pragma.html#pragma_cache_size).
pub(crate) const CACHE_KIB: i64 = 64 * 1024;
/// Prepared statements the writer keeps: the few of a write, the nine
/// shapes of index inserts (`query::index_inserts`), and room to spare.
const STATEMENTS: usize = 32;

/// Groups the writer commits between two checkpoints. A create by one
/// client writes about 15 pages to the WAL, so 64 of them come near
/// SQLite's own default of a checkpoint per 1,000 pages
/// (https://www.sqlite.org/wal.html#automatic_checkpoint).
pub(crate) const CHECKPOINT_EVERY: u32 = 64;
/// WAL pages after which the writer checkpoints by itself, should the
/// checkpointer thread fall behind (40 MB of 4 KiB pages).
const BACKSTOP_PAGES: u32 = 10_000;

/// A new resource row; SQLite numbers it (`res_key` is the rowid: the
/// largest so far plus one, never a key used before, as resource rows are
/// never removed; a deletion keeps its row).
const INSERT_ROW: &str =
    "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, body) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (resource_type, id) DO NOTHING RETURNING res_key";

/// A write set waiting for the writer, and where its outcome goes.
pub(crate) struct Pending {
    pub ops: Vec<WriteOp>,
    pub reply: oneshot::Sender<StoreResult<Vec<WriteOutcome>>>,
}

/// Opens the write connection to the (migrated) database at `path`.
pub(crate) fn open(path: &str) -> StoreResult<Connection> {
    // The plain file name, as the sqlx readers open it (not as a URI).
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).db()?;
    conn.busy_timeout(Duration::from_secs(5)).db()?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .db()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Config(format!(
            "SQLite could not switch {path} to write-ahead logging (journal mode {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL").db()?;
    // A savepoint's journal stays in memory rather than spilling to a
    // temporary file (https://www.sqlite.org/pragma.html#pragma_temp_store).
    conn.pragma_update(None, "temp_store", "MEMORY").db()?;
    conn.pragma_update(None, "foreign_keys", "ON").db()?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB).db()?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

/// Starts the writer thread on the database at `path`, and the thread
/// that checkpoints its WAL. Both end when every sender of `queue` (every
/// handle to the store) is gone.
pub(crate) fn start(path: &str, queue: mpsc::Receiver<Pending>) -> StoreResult<()> {
    let writer = open(path)?;
    writer
        .pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)
        .db()?;
    let checkpointer = open(path)?;
    let (due, checkpoints) = std::sync::mpsc::sync_channel(1);
    let spawn = |name: &str, work: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(work)
            .map(drop)
            .map_err(|e| StoreError::Unavailable(Box::new(e)))
    };
    spawn(
        "sqlite-checkpoint",
        Box::new(move || checkpoint(&checkpointer, &checkpoints)),
    )?;
    spawn("sqlite-writer", Box::new(move || run(writer, queue, &due)))
}

/// Copies committed pages from the WAL into the database file each time
/// the writer says enough have gathered, off the writer's path: a
/// checkpoint ends with an `fsync` of the database file, which the writer
/// (checkpointing by itself, as SQLite does by default) made the commit of
/// every 60th or so write wait for. A PASSIVE checkpoint never waits for
/// the writer or the readers (https://www.sqlite.org/c3ref/wal_checkpoint_v2.html).
fn checkpoint(conn: &Connection, due: &std::sync::mpsc::Receiver<()>) {
    while due.recv().is_ok() {
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "a checkpoint of the SQLite WAL failed; the next one retries");
        }
    }
}

/// Takes every write set that queued up (at most `MAX_GROUP`) and commits
/// them together. A panic in a write (a transform, a finalizer, the
/// indexer) fails its group only: the transaction rolls back as the panic
/// unwinds, the group's callers hear that the writer could not complete
/// their writes, and the writer goes on.
fn run(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Pending>,
    checkpoint_due: &std::sync::mpsc::SyncSender<()>,
) {
    let mut since_checkpoint = 0;
    while let Some(first) = queue.blocking_recv() {
        let mut group = Vec::with_capacity(MAX_GROUP);
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(pending) => group.push(pending),
                Err(_) => break,
            }
        }
        let committed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            commit_group(&mut conn, group);
        }));
        if committed.is_err() {
            tracing::error!("the SQLite writer failed on a group of writes; those not answered yet were not committed");
        }
        since_checkpoint += 1;
        if since_checkpoint >= CHECKPOINT_EVERY {
            since_checkpoint = 0;
            // One pending request is enough: a checkpoint copies whatever
            // has been committed by the time it runs.
            let _ = checkpoint_due.try_send(());
        }
    }
}

/// Commits `group` and answers each caller.
pub(crate) fn commit_group(conn: &mut Connection, group: Vec<Pending>) {
    // Large write sets (transaction bundles) gain nothing from sharing a
    // commit, and in a savepoint they would cost the square of their size.
    // They go first: write sets that wait together were sent concurrently,
    // so no order among them is promised.
    let (alone, mut group): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|p| p.ops.len() > MAX_GROUPED_OPS);
    tracing::trace!(
        size = group.len(),
        alone = alone.len(),
        "committing a group of write sets"
    );
    for p in alone {
        if !p.reply.is_closed() {
            let _ = p.reply.send(write_set(conn, &p.ops));
        }
    }
    group.retain(|p| !p.reply.is_closed());
    if group.len() <= 1 {
        for p in group {
            let _ = p.reply.send(write_set(conn, &p.ops));
        }
        return;
    }
    match commit_together(conn, &group) {
        Ok(results) => {
            for (p, result) in group.into_iter().zip(results) {
                let _ = p.reply.send(result);
            }
        }
        // The database is not there: every caller hears so, rather than
        // each waiting its turn to fail the same way.
        Err(StoreError::Unavailable(err)) => {
            let message = err.to_string();
            for p in group {
                let _ = p
                    .reply
                    .send(Err(StoreError::Unavailable(message.clone().into())));
            }
        }
        Err(err) => {
            // Nothing of the group was committed: each write set gets a
            // transaction of its own, so a fault stays with its cause.
            tracing::warn!(error = %err, size = group.len(), "a group commit failed; committing its writes one by one");
            for p in group {
                if !p.reply.is_closed() {
                    let _ = p.reply.send(write_set(conn, &p.ops));
                }
            }
        }
    }
}

/// One transaction for the whole group. A write set refused for its own
/// reasons (a conflict, a refusal, a missing resource) is rolled back alone
/// and reported; a database fault fails the whole transaction (`Err`,
/// nothing committed). A write set whose caller has given up by the time
/// its turn comes is skipped.
pub(crate) fn commit_together(
    conn: &mut Connection,
    group: &[Pending],
) -> StoreResult<Vec<StoreResult<Vec<WriteOutcome>>>> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let mut results = Vec::with_capacity(group.len());
    for p in group {
        if p.reply.is_closed() {
            results.push(Ok(Vec::new()));
            continue;
        }
        // A single write refused for its own reasons has written nothing
        // (`conditional` and `decide` refuse before anything is written),
        // so it needs no savepoint.
        if let [op] = p.ops.as_slice() {
            results.push(match apply(&tx, op) {
                Ok(outcome) => Ok(vec![outcome]),
                Err(err) if refused_alone(&err) => Err(err),
                Err(err) => return Err(err),
            });
            continue;
        }
        let mut savepoint = tx.savepoint().db()?;
        let mut outcomes = Vec::with_capacity(p.ops.len());
        let mut refused = None;
        for op in &p.ops {
            match apply(&savepoint, op) {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) if refused_alone(&err) => {
                    refused = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        if refused.is_some() {
            savepoint.rollback().db()?;
        }
        savepoint.commit().db()?;
        results.push(match refused {
            Some(err) => Err(err),
            None => Ok(outcomes),
        });
    }
    tx.commit().db()?;
    Ok(results)
}

/// Whether a write set failed for reasons of its own, which leave the
/// transaction sound, rather than because of the database.
fn refused_alone(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::NotFound { .. }
            | StoreError::Gone { .. }
            | StoreError::VersionConflict { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::MultipleMatches { .. }
            | StoreError::MatchAppeared { .. }
            | StoreError::MatchChanged { .. }
            | StoreError::NoMatch { .. }
            | StoreError::Rejected(_)
            | StoreError::Corrupt(_)
    )
}

/// Applies `ops` in one transaction of their own, all or nothing.
fn write_set(conn: &mut Connection, ops: &[WriteOp]) -> StoreResult<Vec<WriteOutcome>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db()?;
            let outcomes = ops
                .iter()
                .map(|op| apply(&tx, op))
                .collect::<StoreResult<Vec<_>>>()?;
            tx.commit().db()?;
            Ok(outcomes)
        })();
        match result {
            Err(StoreError::Contention) if attempt < crate::sql::CONTENTION_RETRIES => {
                tracing::debug!(attempt, "write contention; retrying");
            }
            other => return other,
        }
    }
}

/// Applies one write inside an open transaction; the same steps as the
/// PostgreSQL backend's (`sql_writes!`).
fn apply(conn: &Connection, op: &WriteOp) -> StoreResult<WriteOutcome> {
    let mut matched = None;
    if let Some(matching) = &op.matching {
        let found = find_matches(conn, matching)?;
        match crate::sql::conditional(op, matching, found)? {
            Conditional::Proceed => {}
            Conditional::Target(found) => matched = Some(found),
            Conditional::Answer(outcome) => return Ok(outcome),
        }
    }
    let id = matched
        .as_ref()
        .map_or(op.id.as_str(), |found| found.id.as_str());
    let mut unread = crate::sql::inserts_unread(op);
    loop {
        let selected = if std::mem::take(&mut unread) {
            None
        } else {
            select_current(conn, &op.resource_type, id)?
        };
        let plan = match crate::sql::decide(op, id, matched.as_ref(), selected)? {
            Step::Answer(outcome) => return Ok(outcome),
            Step::Store(plan) => plan,
        };
        let r = &plan.outcome.resource;
        let row: [&dyn ToSql; 6] = [
            &r.resource_type,
            &r.id,
            &r.version_id,
            &r.last_updated,
            &r.deleted,
            &r.body,
        ];
        let key = match plan.key {
            None => {
                let mut insert = conn.prepare_cached(INSERT_ROW).db()?;
                bind(&mut insert, &row)?;
                let inserted = insert
                    .raw_query()
                    .next()
                    .db()?
                    .map(|found| found.get::<_, i64>(0))
                    .transpose()
                    .db()?;
                match inserted {
                    Some(key) => key,
                    // The id was taken after all: read it and decide again.
                    None => continue,
                }
            }
            Some(key) => {
                let mut update = conn.prepare_cached(crate::sql::UPDATE_ROW).db()?;
                bind(&mut update, &row)?;
                update.raw_execute().db()?;
                key
            }
        };
        write_index(
            conn,
            key,
            &r.resource_type,
            &plan.entries,
            plan.key.is_some(),
        )?;
        for event in &plan.events {
            let mut insert = conn.prepare_cached(crate::sql::INSERT_EVENT).db()?;
            bind(
                &mut insert,
                &[
                    &event.destination,
                    &event.topic,
                    &r.resource_type,
                    &r.id,
                    &r.version_id,
                    &event.interaction,
                    &r.last_updated,
                    &event.destination_version,
                ],
            )?;
            insert.raw_execute().db()?;
        }
        return Ok(plan.outcome);
    }
}

/// The current row of a resource and its `res_key`.
fn select_current(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> StoreResult<Option<(StoredResource, i64)>> {
    let mut select = conn
        .prepare_cached(
            "SELECT resource_type, id, version_id, last_updated, deleted, body, res_key \
             FROM resource WHERE resource_type = $1 AND id = $2",
        )
        .db()?;
    bind(&mut select, &[&resource_type, &id])?;
    let mut rows = select.raw_query();
    let Some(row) = rows.next().db()? else {
        return Ok(None);
    };
    Ok(Some((crate::sql::stored(row)?, row.get("res_key").db()?)))
}

/// The first two current matches of a conditional write's criteria.
fn find_matches(conn: &Connection, matching: &Matching) -> StoreResult<Vec<StoredResource>> {
    let plan = query::search(&crate::sql::match_query(matching))?;
    let mut select = conn.prepare(&plan.select.text).db()?;
    bind_values(&mut select, &plan.select.binds)?;
    let mut rows = select.raw_query();
    let mut found = Vec::new();
    while let Some(row) = rows.next().db()? {
        found.push(crate::sql::stored(row)?);
    }
    Ok(found)
}

/// Replaces the index rows of the resource row `key`.
fn write_index(
    conn: &Connection,
    key: i64,
    resource_type: &str,
    entries: &[IndexEntry],
    had_rows: bool,
) -> StoreResult<()> {
    if had_rows {
        let mut delete = conn
            .prepare_cached("DELETE FROM search_index WHERE res_key = $1")
            .db()?;
        bind(&mut delete, &[&key])?;
        delete.raw_execute().db()?;
    }
    for statement in query::index_inserts(key, resource_type, entries) {
        let mut insert = conn.prepare_cached(&statement.text).db()?;
        bind_values(&mut insert, &statement.binds)?;
        insert.raw_execute().db()?;
    }
    Ok(())
}

/// Binds `values` to a statement's `$1`, `$2`, … by number, wherever each
/// placeholder sits in the text (SQLite numbers parameters in the order
/// they first appear, so `$3` may be its first).
pub(crate) fn bind(statement: &mut Statement<'_>, values: &[&dyn ToSql]) -> StoreResult<()> {
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=values.len()).contains(n))
            .ok_or_else(|| {
                // Not a refusal: it may come after the write's row was
                // stored, so it fails the whole group (`refused_alone`).
                StoreError::Database(format!("a statement's parameter {index} has no value").into())
            })?;
        statement
            .raw_bind_parameter(index, values[number - 1])
            .db()?;
    }
    Ok(())
}

/// Binds SQL built by `query`, by position. Its placeholders `$1`, `$2`, …
/// first appear in the text in that order (`query::Sql` appends each new
/// one at the end), so SQLite's parameter N is `$N`. `bind` looks each name
/// up instead, and SQLite finds a parameter's name by walking the list of
/// the statement's names: for an index insert of hundreds of values that
/// walk cost the square of their number.
pub(crate) fn bind_values(statement: &mut Statement<'_>, binds: &[Bind]) -> StoreResult<()> {
    let last = format!("${}", binds.len());
    if statement.parameter_count() != binds.len()
        || (!binds.is_empty() && statement.parameter_name(binds.len()) != Some(last.as_str()))
    {
        return Err(StoreError::Database(
            format!(
                "a statement of {} parameters, the last named {:?}, was given {} values",
                statement.parameter_count(),
                statement.parameter_name(statement.parameter_count()),
                binds.len()
            )
            .into(),
        ));
    }
    debug_assert!(
        (1..=binds.len()).all(|n| statement.parameter_name(n) == Some(format!("${n}").as_str()))
    );
    for (i, b) in binds.iter().enumerate() {
        let index = i + 1;
        match b {
            Bind::Text(s) => statement.raw_bind_parameter(index, s.as_str()),
            Bind::Int(v) => statement.raw_bind_parameter(index, v),
            Bind::Float(v) => statement.raw_bind_parameter(index, v),
            Bind::NullText | Bind::NullInt | Bind::NullFloat => {
                statement.raw_bind_parameter(index, Value::Null)
            }
        }
        .db()?;
    }
    Ok(())
}
