//! SQLite's readers: a few read-only connections, each used by one read at
//! a time, on the thread of the request that reads.
//!
//! sqlx hands every statement to a worker thread of the connection and each
//! row back through a channel; on this project's 2-core machines a read by
//! id spent more of the processor on those thread switches than in SQLite
//! (bench/README.md). A read here runs its statements where it is asked
//! for, which costs a point read or a selective search a few microseconds
//! of the runtime's thread. A read that runs longer must not hold that
//! thread (the runtime has one per core, and every request waits behind
//! it): SQLite's progress handler stops it once it has run for
//! `INLINE_BUDGET` (https://www.sqlite.org/c3ref/progress_handler.html),
//! and it starts again on a thread of tokio's blocking pool, where it may
//! run as long as it needs. What the first attempt did is thrown away; it
//! wrote nothing.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{DbResult, StoreError};
use crate::StoreResult;

/// How long a read may run on the requesting thread before it moves to
/// the blocking pool.
const INLINE_BUDGET: Duration = Duration::from_micros(500);
/// SQLite virtual machine steps between two looks at the clock (a step
/// is tens of nanoseconds).
const STEPS_PER_CHECK: i32 = 1000;
/// How long a read on the blocking pool waits for a lock it needs (WAL
/// readers rarely do: only while the WAL index is rebuilt), as the busy
/// timeout of the other connections.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How long a read waits for a free connection before it fails as
/// unavailable.
const ACQUIRE_WAIT: Duration = Duration::from_secs(30);
/// Prepared statements each reader keeps: the point reads and the
/// searches a server runs most.
const STATEMENTS: usize = 64;

thread_local! {
    /// While a read runs on the requesting thread, when it must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether the read on this thread was stopped to move.
    static STOPPED: Cell<bool> = const { Cell::new(false) };
}

/// The reader connections of one database file.
pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection in `idle`.
    permits: Arc<Semaphore>,
}

impl Readers {
    /// Opens `count` read-only connections to the (migrated) database at
    /// `path`, each with `configure` applied (which must not set a busy
    /// timeout: that would replace `busy`).
    pub(crate) fn open(
        path: &str,
        count: usize,
        configure: impl Fn(&Connection) -> rusqlite::Result<()>,
    ) -> StoreResult<Arc<Readers>> {
        let mut idle = Vec::with_capacity(count);
        for _ in 0..count {
            // The plain file name, as the writer opens it (not as a URI).
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags).db()?;
            conn.busy_handler(Some(busy)).db()?;
            conn.progress_handler(STEPS_PER_CHECK, Some(out_of_time));
            conn.set_prepared_statement_cache_capacity(STATEMENTS);
            configure(&conn).db()?;
            idle.push(conn);
        }
        Ok(Arc::new(Readers {
            permits: Arc::new(Semaphore::new(idle.len())),
            idle: Mutex::new(idle),
        }))
    }

    /// Closes every connection: reads from now on fail as unavailable, and
    /// a connection still in use closes when its read is over.
    pub(crate) fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.permits.close();
        idle.clear();
    }

    /// Runs `work` on a free connection (waiting up to `ACQUIRE_WAIT` for
    /// one if all are in use): on this thread within `INLINE_BUDGET`, else
    /// again from the start on the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, work: F) -> StoreResult<T>
    where
        F: Fn(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let closed = || StoreError::Unavailable("the SQLite readers are closed".into());
        let permit = tokio::time::timeout(ACQUIRE_WAIT, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(
                    format!(
                        "no SQLite reader was free within {} s",
                        ACQUIRE_WAIT.as_secs()
                    )
                    .into(),
                )
            })?
            .map_err(|_| closed())?;
        let lent = Lent {
            conn: self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop(),
            readers: Arc::clone(self),
            _permit: permit,
        };
        let Some(conn) = lent.conn.as_ref() else {
            // `close` ran between the permit and the connection.
            return Err(closed());
        };
        let first = {
            let _inline = Inline::start();
            work(conn)
        };
        if !STOPPED.replace(false) {
            return first;
        }
        // The connection and its permit go with the read, and come back
        // when it ends, even if nobody waits for it any more.
        let moved = tokio::task::spawn_blocking(move || {
            let conn = lent.conn.as_ref().expect("checked above");
            work(conn)
        })
        .await;
        match moved {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is shutting down; the task was dropped, and the
            // connection with it went back.
            Err(err) => Err(StoreError::Unavailable(Box::new(err))),
        }
    }
}

/// A connection taken from the idle list with its permit, both given back
/// when the read is over (also when it panics: a statement is reset as it
/// drops, and a read leaves nothing else behind). The connection is back
/// in the list before the permit is released (fields drop after `drop`).
struct Lent {
    conn: Option<Connection>,
    readers: Arc<Readers>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.readers.idle.lock().unwrap_or_else(|e| e.into_inner());
            // After `close`, a connection closes rather than going back.
            if !self.readers.permits.is_closed() {
                idle.push(conn);
            }
        }
    }
}

/// The requesting thread's read, timed while it lasts.
struct Inline;

impl Inline {
    fn start() -> Inline {
        STOPPED.set(false);
        DEADLINE.set(Some(Instant::now() + INLINE_BUDGET));
        Inline
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        DEADLINE.set(None);
    }
}

/// SQLite's progress handler: stops a read on the requesting thread once
/// its time is up (`true` interrupts the statement).
fn out_of_time() -> bool {
    let stop = DEADLINE
        .get()
        .is_some_and(|deadline| Instant::now() >= deadline);
    if stop {
        STOPPED.set(true);
    }
    stop
}

/// SQLite's busy handler: a read on the requesting thread never waits for
/// a lock; it moves to the blocking pool, which waits up to `BUSY_WAIT`
/// (`true` tries again).
fn busy(attempts: i32) -> bool {
    if DEADLINE.get().is_some() {
        STOPPED.set(true);
        return false;
    }
    const PAUSE: Duration = Duration::from_millis(1);
    if PAUSE * u32::try_from(attempts).unwrap_or(u32::MAX) >= BUSY_WAIT {
        return false;
    }
    std::thread::sleep(PAUSE);
    true
}

impl crate::sql::Columns for rusqlite::Row<'_> {
    fn text(&self, name: &str) -> StoreResult<Option<String>> {
        self.get(name).db()
    }
    fn int(&self, name: &str) -> StoreResult<Option<i64>> {
        self.get(name).db()
    }
    fn float(&self, name: &str) -> StoreResult<Option<f64>> {
        self.get(name).db()
    }
    fn flag(&self, name: &str) -> StoreResult<bool> {
        self.get(name).db()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::thread::ThreadId;

    use super::*;

    /// A sum SQLite takes far longer than `INLINE_BUDGET` to count up.
    const LONG: &str =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
                        SELECT sum(x) FROM c";
    const LONG_SUM: i64 = 3_000_000 * 3_000_001 / 2;

    fn readers(dir: &tempfile::TempDir, count: usize) -> Arc<Readers> {
        let path = dir.path().join("r.db");
        let path = path.to_str().unwrap();
        Connection::open(path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
            .unwrap();
        Readers::open(path, count, |_| Ok(())).unwrap()
    }

    /// Runs `sql` (one integer back) on `readers`, noting the thread of
    /// each attempt in `threads`.
    async fn sum(
        readers: &Arc<Readers>,
        sql: &'static str,
        threads: &Arc<Mutex<Vec<ThreadId>>>,
    ) -> StoreResult<i64> {
        let threads = Arc::clone(threads);
        readers
            .run(move |conn| {
                threads.lock().unwrap().push(std::thread::current().id());
                conn.query_row(sql, [], |row| row.get(0)).db()
            })
            .await
    }

    /// A short read runs once, on the requesting thread; a long one is
    /// stopped there and runs again elsewhere, with the whole answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_read_moves_off_the_requesting_thread() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(&dir, 1);
        let here = std::thread::current().id();

        let threads = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(sum(&readers, "SELECT 7", &threads).await.unwrap(), 7);
        assert_eq!(*threads.lock().unwrap(), vec![here]);

        let threads = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(sum(&readers, LONG, &threads).await.unwrap(), LONG_SUM);
        let threads = threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 2, "{threads:?}");
        assert_eq!(
            threads[0], here,
            "the first attempt runs where it was asked for"
        );
        assert_ne!(threads[1], here, "the second runs on the blocking pool");

        // The one connection came back: the next read finds it.
        let threads = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(sum(&readers, "SELECT 8", &threads).await.unwrap(), 8);
    }

    /// More long reads than connections: each waits its turn and all
    /// finish; afterwards every connection is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_share_the_connections() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(&dir, 2);
        let runs: Vec<_> = (0..5)
            .map(|_| {
                let readers = Arc::clone(&readers);
                tokio::spawn(async move {
                    let threads = Arc::new(Mutex::new(Vec::new()));
                    sum(&readers, LONG, &threads).await
                })
            })
            .collect();
        for run in runs {
            assert_eq!(run.await.unwrap().unwrap(), LONG_SUM);
        }
        assert_eq!(readers.idle.lock().unwrap().len(), 2);
        assert_eq!(readers.permits.available_permits(), 2);
    }

    /// A read given up while it runs on the blocking pool (its client went
    /// away) keeps its connection until it ends, then gives it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_read_gives_its_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(&dir, 1);
        let threads = Arc::new(Mutex::new(Vec::new()));
        let abandoned = {
            let (readers, threads) = (Arc::clone(&readers), Arc::clone(&threads));
            tokio::spawn(async move { sum(&readers, LONG, &threads).await })
        };
        assert!(
            fhirbox_test_support::wait_until(Duration::from_secs(30), || {
                threads.lock().unwrap().len() == 2
            }),
            "the read never moved"
        );
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        for (sql, expected) in [("SELECT 1", 1), ("SELECT 2", 2), ("SELECT 3", 3)] {
            let threads = Arc::new(Mutex::new(Vec::new()));
            assert_eq!(sum(&readers, sql, &threads).await.unwrap(), expected);
        }
        assert_eq!(readers.idle.lock().unwrap().len(), 1);
        assert_eq!(readers.permits.available_permits(), 1);
    }

    /// Once closed, reads fail as unavailable and no connection is kept.
    #[tokio::test]
    async fn closed_readers_refuse_reads() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(&dir, 2);
        readers.close();
        let threads = Arc::new(Mutex::new(Vec::new()));
        let refused = sum(&readers, "SELECT 1", &threads).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(threads.lock().unwrap().is_empty());
        assert!(readers.idle.lock().unwrap().is_empty());
    }

    /// A read that panics on the blocking pool panics its caller, and its
    /// connection is still returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_read_gives_its_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let readers = readers(&dir, 1);
        let panicking = Arc::clone(&readers);
        let outcome = tokio::spawn(async move {
            panicking
                .run(|conn| {
                    if DEADLINE.get().is_none() {
                        panic!("a read failed on the blocking pool");
                    }
                    conn.query_row(LONG, [], |row| row.get::<_, i64>(0)).db()
                })
                .await
        })
        .await;
        assert!(outcome.unwrap_err().is_panic());
        assert_eq!(readers.idle.lock().unwrap().len(), 1);
        let threads = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(sum(&readers, "SELECT 9", &threads).await.unwrap(), 9);
    }
}
