//! SQLite backend: one writer (SQLite allows one writer at a time; a single
//! connection serialises writes), a few readers (`sqlite_reader`), WAL mode
//! so readers never wait for the writer. The index rebuild and migrations
//! use a second write connection, which waits for the writer's lock.
//!
//! Writes reach the writer (`sqlite_writer`, a thread of its own) through a
//! queue, and the writer commits what has queued up while it was busy in one
//! transaction (group commit). Committing together shares the pages a commit
//! writes (the tails of the tables and the index pages the writes have in
//! common) and the commit itself.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::DbResult;
use crate::sql::TotalFrom;
use crate::sqlite_reader::Readers;
use crate::sqlite_writer::{self, bind, bind_values, Pending};
use crate::{ChangeMarker, ResourceHistory, ResourceRead, ResourceSearch, StoreHealth};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

// The sqlx pool rebuilds index rows (`fhirbox reindex`) and migrates;
// writes go through `sqlite_writer`, reads through `sqlite_reader`. A
// rebuild's transaction takes the write lock at its start, waiting up to
// the busy timeout for the writer thread, rather than failing when its
// read turns into a write (https://www.sqlite.org/lang_transaction.html).
crate::sql::sql_backend!(SqliteStore, Sqlite, SqliteConnection, "", "BEGIN IMMEDIATE");

/// Resources in an embedded SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: Arc<Readers>,
    queue: mpsc::Sender<Pending>,
}

const READERS: usize = 4;
/// Write sets that may wait for the writer; beyond that, callers wait to
/// hand theirs over.
const QUEUE: usize = 1024;
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

impl SqliteStore {
    /// The pool writes outside a resource write use (the outbox).
    pub(crate) fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

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
        // The page cache of the writer thread's connection: an index rebuild
        // dirties as many pages as a large write set.
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{}", sqlite_writer::CACHE_KIB));
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
        let readers = Readers::open(path, READERS, |conn| {
            conn.pragma_update(None, "cache_size", -i64::from(READER_CACHE_KIB))?;
            conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
            conn.pragma_update(None, "temp_store", "MEMORY")
        })?;
        let (queue, pending) = mpsc::channel(QUEUE);
        sqlite_writer::start(path, pending)?;
        Ok(SqliteStore {
            writer,
            readers,
            queue,
        })
    }

    /// Closes the readers and the pool of the index rebuild and
    /// migrations. (The writer thread ends once every handle to the store
    /// is dropped.)
    pub async fn close(&self) {
        self.readers.close();
        self.writer.close().await;
    }

    async fn setting(&self, name: &str) -> StoreResult<Option<String>> {
        let name = name.to_owned();
        self.readers
            .run(move |conn| {
                let mut select = conn.prepare_cached(crate::sql::READ_SETTING).db()?;
                bind(&mut select, &[&name])?;
                let mut rows = select.raw_query();
                rows.next().db()?.map(|row| row.get(0)).transpose().db()
            })
            .await
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

/// The one row `sql` (bound to `binds`) selects, if any, as a resource.
fn one_row(
    conn: &rusqlite::Connection,
    sql: &str,
    binds: &[&dyn rusqlite::ToSql],
) -> StoreResult<Option<StoredResource>> {
    let mut select = conn.prepare_cached(sql).db()?;
    bind(&mut select, binds)?;
    let mut rows = select.raw_query();
    rows.next().db()?.map(crate::sql::stored).transpose()
}

/// The number a bound statement that selects one (a count, a maximum)
/// returns.
fn number(select: &mut rusqlite::Statement<'_>) -> StoreResult<i64> {
    let mut rows = select.raw_query();
    match rows.next().db()? {
        Some(row) => row.get(0).db(),
        None => Err(StoreError::Corrupt("an aggregate returned no row".into())),
    }
}

/// The count of a search or a history page.
fn count_of(conn: &rusqlite::Connection, count: &query::Sql) -> StoreResult<i64> {
    let mut select = conn.prepare_cached(&count.text).db()?;
    bind_values(&mut select, &count.binds)?;
    number(&mut select)
}

impl ResourceRead for SqliteStore {
    async fn read(&self, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        let (resource_type, id) = (resource_type.to_owned(), id.to_owned());
        self.readers
            .run(move |conn| one_row(conn, crate::sql::READ_ROW, &[&resource_type, &id]))
            .await
    }

    async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> StoreResult<Option<StoredResource>> {
        let (resource_type, id) = (resource_type.to_owned(), id.to_owned());
        self.readers
            .run(move |conn| {
                one_row(
                    conn,
                    crate::sql::READ_VERSION,
                    &[&resource_type, &id, &version_id],
                )
            })
            .await
    }
}

impl ResourceSearch for SqliteStore {
    async fn search(&self, q: SearchQuery) -> StoreResult<SearchPage> {
        let plan = query::search(&q)?;
        self.readers
            .run(move |conn| {
                let mut select = conn.prepare_cached(&plan.select.text).db()?;
                bind_values(&mut select, &plan.select.binds)?;
                let mut rows = select.raw_query();
                let mut in_page = None;
                let mut found = Vec::new();
                while let Some(row) = rows.next().db()? {
                    let (hit, total) = crate::sql::hit(row, &plan)?;
                    in_page = in_page.or(total);
                    found.push(hit);
                }
                let total = match crate::sql::total_from(&q, &plan, found.len(), in_page) {
                    TotalFrom::Known(total) => total,
                    TotalFrom::Count(count) => query::counted(q.total, count_of(conn, &count)?),
                };
                Ok(query::search_page(&q, plan.backwards, found, total))
            })
            .await
    }
}

impl ResourceHistory for SqliteStore {
    async fn history(&self, q: HistoryQuery) -> StoreResult<HistoryPage> {
        let (select, count) = query::history(&q)?;
        self.readers
            .run(move |conn| {
                let mut statement = conn.prepare_cached(&select.text).db()?;
                bind_values(&mut statement, &select.binds)?;
                let mut rows = statement.raw_query();
                let mut found = Vec::new();
                while let Some(row) = rows.next().db()? {
                    found.push((crate::sql::stored(row)?, row.get("seq").db()?));
                }
                let (mut page, to_count) = crate::sql::history_page(&q, found);
                if to_count {
                    crate::sql::counted_history(&mut page, count_of(conn, &count)?);
                }
                Ok(page)
            })
            .await
    }
}

impl ChangeMarker for SqliteStore {
    async fn latest_change(&self, resource_types: &[&str]) -> StoreResult<i64> {
        let types: Vec<String> = resource_types.iter().map(|t| (*t).to_owned()).collect();
        self.readers
            .run(move |conn| {
                let mut select = conn
                    .prepare_cached(&crate::sql::latest_change_sql(types.len()))
                    .db()?;
                let binds: Vec<&dyn rusqlite::ToSql> =
                    types.iter().map(|t| t as &dyn rusqlite::ToSql).collect();
                bind(&mut select, &binds)?;
                number(&mut select)
            })
            .await
    }
}

impl StoreHealth for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.readers
            .run(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).db())
            .await
    }
}

/// The writer dropped a write set without an answer: it panicked on the
/// group (logged), so nothing of the group was committed.
fn abandoned() -> StoreError {
    StoreError::Unavailable("the SQLite writer could not complete the write".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{Condition, Filter, ResourceRead, ResourceSearch, SearchQuery};

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
            notify: None,
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

    /// A second write connection to the store's file, for driving the
    /// writer's group commit directly.
    fn writer(dir: &tempfile::TempDir) -> rusqlite::Connection {
        sqlite_writer::open(dir.path().join("g.db").to_str().unwrap()).unwrap()
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
        let results = sqlite_writer::commit_together(&mut writer(&_dir), &[a, b, c]).unwrap();
        assert_eq!(results[0].as_ref().unwrap()[0].resource.id, "a");
        assert!(
            matches!(results[1], Err(StoreError::NotFound { .. })),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().unwrap()[0].resource.id, "c");
        assert_kept(&store, &[("a", true), ("b", false), ("c", true)]).await;
        let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resource_history")
            .fetch_one(&store.writer)
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
        let results = sqlite_writer::commit_together(&mut writer(&_dir), &[a, b, c, d, e]).unwrap();
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
            .fetch_one(&store.writer)
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
            (0..=sqlite_writer::MAX_GROUPED_OPS)
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
        sqlite_writer::commit_group(&mut writer(&_dir), vec![a, big, bad, c]);
        assert_eq!(ra.await.unwrap().unwrap()[0].resource.id, "a");
        assert_eq!(
            rbig.await.unwrap().unwrap().len(),
            sqlite_writer::MAX_GROUPED_OPS + 1
        );
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

    /// The checkpointer thread copies committed pages into the database
    /// file while the writer goes on: the file itself grows once enough
    /// groups have been committed, well before the writer's own backstop.
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let (dir, store) = fresh().await;
        let file = dir.path().join("g.db");
        let size = || std::fs::metadata(&file).unwrap().len();
        let before = size();
        for i in 0..2 * sqlite_writer::CHECKPOINT_EVERY {
            store.write(put(&format!("p{i}"))).await.unwrap();
        }
        assert!(
            fhirbox_test_support::wait_until(Duration::from_secs(10), || size() > before),
            "the database file stayed at {before} bytes"
        );
    }

    /// A database of schema 9 (`res_key` beside the rowid) moves to `res_key`
    /// as the rowid: rows, keys, versions and index rows are kept, the
    /// history triggers still copy each version, and a new row is keyed
    /// after the largest key.
    #[tokio::test]
    async fn keys_become_rowids_and_everything_stays() {
        use sqlx::Connection as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let path = path.to_str().unwrap();
        {
            let options = SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(path)
                .create_if_missing(true);
            let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
            run_migrations(&mut conn, &crate::migrate::SQLITE[..9], None)
                .await
                .unwrap();
            for statement in [
                "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, body, res_key) \
                 VALUES ('Patient', 'a', 2, 1, FALSE, '{\"resourceType\":\"Patient\",\"id\":\"a\"}', 7)",
                "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, body, res_key) \
                 VALUES ('Patient', 'b', 1, 2, FALSE, '{\"resourceType\":\"Patient\",\"id\":\"b\"}', 3)",
                "INSERT INTO search_index (res_key, resource_type, param, kind, code) \
                 VALUES (7, 'Patient', 'tag', 2, 'a')",
            ] {
                sqlx::query(statement).execute(&mut conn).await.unwrap();
            }
        }
        let store = SqliteStore::open(path).await.unwrap();
        let key = |id: &'static str| {
            sqlx::query_scalar::<_, i64>("SELECT rowid FROM resource WHERE id = $1")
                .bind(id)
                .fetch_one(&store.writer)
        };
        assert_eq!((key("a").await.unwrap(), key("b").await.unwrap()), (7, 3));
        assert_eq!(tagged(&store, "a").await, 1, "the index row still finds a");
        assert_eq!(
            store
                .read("Patient", "a")
                .await
                .unwrap()
                .unwrap()
                .version_id,
            2
        );
        let written = store.write(put("c")).await.unwrap();
        assert_eq!(key("c").await.unwrap(), 8, "keyed after the largest");
        assert!(store.vread("Patient", "c", 1).await.unwrap().is_some());
        let updated = store.write(put("a")).await.unwrap();
        assert_eq!(
            (written.resource.version_id, updated.resource.version_id),
            (1, 3)
        );
        assert!(
            store.vread("Patient", "a", 3).await.unwrap().is_some(),
            "the trigger copied it"
        );
    }

    /// A write set whose caller has gone is skipped; the others commit.
    #[tokio::test]
    async fn a_group_skips_write_sets_nobody_waits_for() {
        let (_dir, store) = fresh().await;
        let (a, ra) = pending(vec![put("a")]);
        let (b, _rb) = pending(vec![put("b")]);
        drop(ra);
        sqlite_writer::commit_together(&mut writer(&_dir), &[a, b]).unwrap();
        assert!(store.read("Patient", "a").await.unwrap().is_none());
        assert!(store.read("Patient", "b").await.unwrap().is_some());
    }
}
