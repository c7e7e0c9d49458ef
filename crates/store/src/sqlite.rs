//! SQLite backend: one writer connection (SQLite allows one writer at a time;
//! a single connection serialises writes without SQLITE_BUSY), a small pool of
//! readers, WAL mode so readers never wait for the writer.
//!
//! Writes reach the writer through a queue, and the writer commits what has
//! queued up while it was busy in one transaction (group commit), each write
//! set in a savepoint of its own: a write set still succeeds or fails alone,
//! and a caller hears of success only once its write is committed. Committing
//! together shares the pages a commit writes (the tails of the tables and the
//! index pages the writes have in common) and the commit itself.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::error::DbResult;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

// SQLite has one writer at a time, so the next key is the largest plus one.
// A write transaction takes the write lock at its start (waiting up to the
// busy timeout for another process), rather than failing when a read turns
// into a write (https://www.sqlite.org/lang_transaction.html).
crate::sql::sql_backend!(
    SqliteStore,
    Sqlite,
    SqliteConnection,
    "",
    "(SELECT COALESCE(MAX(res_key), 0) + 1 FROM resource)",
    "BEGIN IMMEDIATE",
    false,
    None
);

/// Resources in an embedded SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    queue: mpsc::Sender<Pending>,
}

const READERS: u32 = 4;
/// The most write sets one transaction commits together.
const MAX_GROUP: usize = 32;
/// Write sets that may wait for the writer; beyond that, callers wait to
/// hand theirs over.
const QUEUE: usize = 1024;
/// A write set of more writes than this is committed in a transaction of
/// its own. In a savepoint, SQLite walks the savepoint's in-memory journal
/// from its start at the end of every statement (`memjrnlTruncate` in
/// SQLite's memjournal.c), so a large write set there costs the square of
/// its size: a 2,000-entry Synthea bundle spent more than half its time so.
const MAX_GROUPED_OPS: usize = 16;
/// The writer connection's page cache, in KiB (64 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// Each reader connection's page cache, in KiB (16 MiB): a search that
/// checks a few thousand candidates reads their index and resource pages
/// from it rather than asking the operating system for each one.
const READER_CACHE_KIB: u32 = 16 * 1024;
/// Readers map the database file (up to 1 GiB) and read its pages in place
/// instead of copying each one out of the operating system's cache with a
/// system call: a search that checks a few thousand candidates spent half
/// its time so. The mapping shares the operating system's page cache, so it
/// costs no memory of its own. The price, as SQLite documents
/// (https://www.sqlite.org/mmap.html): a disk I/O error while reading
/// becomes a crash of the process rather than an error of the request.
const READER_MMAP_BYTES: u64 = 1 << 30;

/// A write set waiting for the writer, and where its outcome goes.
struct Pending {
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<StoreResult<Vec<WriteOutcome>>>,
}

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
            // A savepoint's journal stays in memory rather than spilling to a
            // temporary file (https://www.sqlite.org/pragma.html#pragma_temp_store).
            .pragma("temp_store", "memory")
            .foreign_keys(true);
        // The writer's page cache holds a whole group of writes (a large
        // transaction bundle dirties tens of thousands of index pages);
        // with SQLite's default of 2 MiB it spills dirty pages to the WAL
        // mid-transaction and reads the same pages back
        // (https://www.sqlite.org/pragma.html#pragma_cache_size).
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{}", WRITER_CACHE_KIB));
        // A connection to a local file has no other end that could hang
        // up: the pools skip sqlx's ping before each use, a round trip to
        // the connection's worker thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(writer_options)
            .await
            .db()?;
        {
            let mut conn = writer.acquire().await.db()?;
            run_migrations(&mut conn, crate::migrate::SQLITE, None).await?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                options
                    .read_only(true)
                    .pragma("cache_size", format!("-{}", READER_CACHE_KIB))
                    .pragma("mmap_size", READER_MMAP_BYTES.to_string()),
            )
            .await
            .db()?;
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(group_commit(writer.clone(), pending));
        Ok(SqliteStore {
            writer,
            reader,
            queue,
        })
    }

    /// Hands `ops` to the writer and waits until they are committed (or
    /// refused). A caller that gives up before the writer reaches its write
    /// set is skipped; one that gives up later may still see it committed.
    async fn submit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Pending { ops, reply })
            .await
            .map_err(|_| abandoned())?;
        outcome.await.map_err(|_| abandoned())?
    }
}

/// The writer dropped a write set without an answer: it panicked on the
/// group (logged by tokio), so nothing of the group was committed.
fn abandoned() -> StoreError {
    StoreError::Unavailable("the SQLite writer could not complete the write".into())
}

/// The writer: takes every write set that queued up (at most `MAX_GROUP`)
/// and commits them together. Each group runs in a task of its own, so a
/// panic in a write (a transform, a finalizer, the indexer) fails that group
/// only, and the writer goes on. Ends when every handle to the store is gone.
async fn group_commit(pool: SqlitePool, mut queue: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let taken = std::mem::replace(&mut group, Vec::with_capacity(MAX_GROUP));
        if let Err(err) = tokio::spawn(commit_group(pool.clone(), taken)).await {
            tracing::error!(error = %err, "the SQLite writer failed on a group of writes; those not answered yet were not committed");
        }
    }
}

/// Commits `group` and answers each caller.
async fn commit_group(pool: SqlitePool, group: Vec<Pending>) {
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
            let _ = p.reply.send(write_set(&pool, &p.ops).await);
        }
    }
    group.retain(|p| !p.reply.is_closed());
    if group.len() <= 1 {
        for p in group {
            let _ = p.reply.send(write_set(&pool, &p.ops).await);
        }
        return;
    }
    match commit_together(&pool, &group).await {
        Ok(results) => {
            for (p, result) in group.into_iter().zip(results) {
                let _ = p.reply.send(result);
            }
        }
        // The database is not there (or the writer connection is busy
        // elsewhere for longer than the pool waits): every caller hears so,
        // rather than each waiting its turn to fail the same way.
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
                    let _ = p.reply.send(write_set(&pool, &p.ops).await);
                }
            }
        }
    }
}

/// One transaction for the whole group, each write set in a savepoint: a
/// write set refused for its own reasons (a conflict, a refusal, a missing
/// resource) is rolled back alone and reported; a database fault fails the
/// whole transaction (`Err`, nothing committed). A write set whose caller
/// has given up by the time its turn comes is skipped.
async fn commit_together(
    pool: &SqlitePool,
    group: &[Pending],
) -> StoreResult<Vec<StoreResult<Vec<WriteOutcome>>>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.db()?;
    let mut results = Vec::with_capacity(group.len());
    for p in group {
        if p.reply.is_closed() {
            results.push(Ok(Vec::new()));
            continue;
        }
        // A single write refused for its own reasons has written nothing
        // (`apply` refuses before it writes), so it needs no savepoint:
        // two statements fewer for the common write set of one.
        if let [op] = p.ops.as_slice() {
            results.push(match apply(&mut tx, op).await {
                Ok(outcome) => Ok(vec![outcome]),
                Err(err) if refused_alone(&err) => Err(err),
                Err(err) => return Err(err),
            });
            continue;
        }
        sqlx::query("SAVEPOINT write_set")
            .execute(&mut *tx)
            .await
            .db()?;
        let mut outcomes = Vec::with_capacity(p.ops.len());
        let mut refused = None;
        for op in &p.ops {
            match apply(&mut tx, op).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) if refused_alone(&err) => {
                    refused = Some(err);
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        if refused.is_some() {
            sqlx::query("ROLLBACK TO write_set")
                .execute(&mut *tx)
                .await
                .db()?;
        }
        sqlx::query("RELEASE write_set")
            .execute(&mut *tx)
            .await
            .db()?;
        results.push(match refused {
            Some(err) => Err(err),
            None => Ok(outcomes),
        });
    }
    tx.commit().await.db()?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{Condition, Filter, ResourceSearch, SearchQuery};

    fn put(id: &str) -> WriteOp {
        let tag: Indexer = Arc::new(|_, body| {
            vec![IndexEntry::Token {
                param: "tag".into(),
                system: None,
                code: body["id"].as_str().map(String::from),
                text: None,
            }]
        });
        WriteOp {
            resource_type: "Patient".into(),
            id: id.into(),
            kind: WriteKind::Put(json!({"resourceType": "Patient", "id": id})),
            if_match: None,
            finalize: None,
            index: Some(tag),
            matching: None,
        }
    }

    fn pending(ops: Vec<WriteOp>) -> (Pending, oneshot::Receiver<StoreResult<Vec<WriteOutcome>>>) {
        let (reply, outcome) = oneshot::channel();
        (Pending { ops, reply }, outcome)
    }

    async fn tagged(store: &SqliteStore, id: &str) -> usize {
        let filter = Filter {
            any_of: vec![Condition::Token {
                param: "tag".into(),
                system: None,
                code: Some(id.into()),
            }],
        };
        let page = store
            .search(SearchQuery {
                resource_type: Some("Patient".into()),
                count: 10,
                filters: vec![filter],
                ..Default::default()
            })
            .await
            .unwrap();
        page.resources.len()
    }

    /// A store in a directory of its own (removed when the guard drops).
    async fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        (dir, store)
    }

    /// Whether each resource (and its index row) was committed.
    async fn assert_kept(store: &SqliteStore, expected: &[(&str, bool)]) {
        for &(id, kept) in expected {
            let stored = store.read("Patient", id).await.unwrap().is_some();
            assert_eq!(stored, kept, "{id}");
            let rows = tagged(store, id).await;
            assert_eq!(rows, usize::from(kept), "index rows of {id}");
        }
    }

    /// Three write sets in one transaction, the middle one failing after its
    /// first write: it is rolled back alone (resource, history and index
    /// rows), the other two are committed.
    #[tokio::test]
    async fn a_group_rolls_back_a_failed_write_set_alone() {
        let (_dir, store) = fresh().await;
        let missing = WriteOp {
            kind: WriteKind::Delete,
            ..put("missing")
        };
        let (a, _ra) = pending(vec![put("a")]);
        let (b, _rb) = pending(vec![put("b"), missing]);
        let (c, _rc) = pending(vec![put("c")]);
        let results = commit_together(&store.writer, &[a, b, c]).await.unwrap();
        assert_eq!(results[0].as_ref().unwrap()[0].resource.id, "a");
        assert!(
            matches!(results[1], Err(StoreError::NotFound { .. })),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().unwrap()[0].resource.id, "c");
        assert_kept(&store, &[("a", true), ("b", false), ("c", true)]).await;
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resource_history")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(versions, 2, "no history row of b");
    }

    /// Write sets of one write, refused in a group (a create of a taken id,
    /// a finalizer's refusal, a delete of nothing), leave no trace without
    /// a savepoint: no row, no version, no index row; the others commit.
    #[tokio::test]
    async fn a_refused_single_write_leaves_nothing_in_its_group() {
        let (_dir, store) = fresh().await;
        store.write(put("taken")).await.unwrap();
        let create_taken = WriteOp {
            kind: WriteKind::Create(json!({"resourceType": "Patient", "id": "taken"})),
            ..put("taken")
        };
        let refuse: crate::Finalize = Arc::new(|_, _| Err(crate::Refusal::invalid("no")));
        let refused = WriteOp {
            finalize: Some(refuse),
            ..put("refused")
        };
        let missing = WriteOp {
            kind: WriteKind::Delete,
            ..put("missing")
        };
        let (a, _ra) = pending(vec![put("a")]);
        let (b, _rb) = pending(vec![create_taken]);
        let (c, _rc) = pending(vec![refused]);
        let (d, _rd) = pending(vec![missing]);
        let (e, _re) = pending(vec![put("e")]);
        let results = commit_together(&store.writer, &[a, b, c, d, e])
            .await
            .unwrap();
        assert!(matches!(results[1], Err(StoreError::AlreadyExists { .. })));
        assert!(matches!(results[2], Err(StoreError::Rejected(_))));
        assert!(matches!(results[3], Err(StoreError::NotFound { .. })));
        assert_kept(
            &store,
            &[
                ("a", true),
                ("taken", true),
                ("refused", false),
                ("e", true),
            ],
        )
        .await;
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resource_history")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(versions, 3, "a, e and the first version of taken");
    }

    /// A large write set in a group is committed on its own, all or
    /// nothing, and the small ones beside it still commit together.
    #[tokio::test]
    async fn a_large_write_set_commits_alone_beside_a_group() {
        let (_dir, store) = fresh().await;
        let bulk = |prefix: &str| {
            (0..=MAX_GROUPED_OPS)
                .map(|i| put(&format!("{prefix}{i}")))
                .collect::<Vec<_>>()
        };
        let mut failing = bulk("f");
        failing.push(WriteOp {
            kind: WriteKind::Delete,
            ..put("missing")
        });
        let (a, ra) = pending(vec![put("a")]);
        let (big, rbig) = pending(bulk("k"));
        let (bad, rbad) = pending(failing);
        let (c, rc) = pending(vec![put("c")]);
        commit_group(store.writer.clone(), vec![a, big, bad, c]).await;
        assert_eq!(ra.await.unwrap().unwrap()[0].resource.id, "a");
        assert_eq!(rbig.await.unwrap().unwrap().len(), MAX_GROUPED_OPS + 1);
        assert!(matches!(
            rbad.await.unwrap(),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(rc.await.unwrap().unwrap()[0].resource.id, "c");
        let kept = [
            ("a", true),
            ("c", true),
            ("k0", true),
            ("k16", true),
            ("f0", false),
        ];
        assert_kept(&store, &kept).await;
    }

    /// A write set whose caller has gone is skipped; the others commit.
    #[tokio::test]
    async fn a_group_skips_write_sets_nobody_waits_for() {
        let (_dir, store) = fresh().await;
        let (a, ra) = pending(vec![put("a")]);
        let (b, _rb) = pending(vec![put("b")]);
        drop(ra);
        commit_together(&store.writer, &[a, b]).await.unwrap();
        assert!(store.read("Patient", "a").await.unwrap().is_none());
        assert!(store.read("Patient", "b").await.unwrap().is_some());
    }
}
