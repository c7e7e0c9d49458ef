//! Resource storage for fhirbox. Small traits split by capability (read, write,
//! history, search), one module per backend with the same layout, and one error
//! enum: no driver type crosses this crate's boundary.

mod change_watch;
mod cursor;
mod error;
pub mod instant;
mod migrate;
mod model;
mod outbox;
mod postgres;
mod query;
mod sql;
mod sqlite;
mod sqlite_reader;
mod sqlite_writer;

use std::future::Future;

pub use change_watch::{ChangeWatch, Reload};
pub use cursor::Cursor;
pub use error::{ErrorSource, Refusal, RefusalIssue, RefusalKind, StoreError};
pub use model::{
    Change, CompositeFirst, CompositeSecond, CompositeTest, Condition, Filter, Finalize,
    HistoryPage, HistoryQuery, HistoryScope, IndexEntry, IndexKind, Indexer, Matching, Notify,
    OutboxEvent, OutboxRow, RangeOp, SearchPage, SearchQuery, SortBy, SortField, SortKey,
    StoredResource, TargetCheck, TimeBound, TotalMode, Transform, UriOp, WriteKind, WriteOp,
    WriteOutcome, BOUNDED_TOTAL,
};
pub use outbox::{Outbox, OutboxLease};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

pub type StoreResult<T> = Result<T, StoreError>;

/// Reading single resources.
pub trait ResourceRead {
    /// The current version, including a tombstone when the resource is deleted.
    fn read(
        &self,
        resource_type: &str,
        id: &str,
    ) -> impl Future<Output = StoreResult<Option<StoredResource>>> + Send;

    /// One specific version (a deleted version comes back with `deleted = true`).
    fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> impl Future<Output = StoreResult<Option<StoredResource>>> + Send;
}

/// Creating, updating and deleting resources.
pub trait ResourceWrite {
    /// One write, atomic on its own: committed when this returns `Ok`,
    /// not at all when it returns an error (a backend may commit it in one
    /// transaction with other callers' writes, each in a savepoint). A
    /// caller that stops waiting (drops the future) may find it committed
    /// or not, as with any request cut off in flight.
    fn write(&self, op: WriteOp) -> impl Future<Output = StoreResult<WriteOutcome>> + Send;

    /// Several writes, all or nothing (FHIR transaction bundles).
    fn write_all(
        &self,
        ops: Vec<WriteOp>,
    ) -> impl Future<Output = StoreResult<Vec<WriteOutcome>>> + Send;
}

/// Version history (instance, type and system level).
pub trait ResourceHistory {
    fn history(&self, query: HistoryQuery)
        -> impl Future<Output = StoreResult<HistoryPage>> + Send;
}

/// Search over current versions.
pub trait ResourceSearch {
    fn search(&self, query: SearchQuery) -> impl Future<Output = StoreResult<SearchPage>> + Send;
}

/// A cheap marker that changes whenever resources of some types change, so
/// caches (clients, policies) can notice writes made by other instances.
/// Every live resource of `resource_type`, read a page at a time: how the
/// server loads its own types (clients, policies, topics, …), which are few.
pub async fn load_all(
    store: &impl ResourceSearch,
    resource_type: &str,
) -> StoreResult<Vec<StoredResource>> {
    let mut query = SearchQuery {
        resource_type: Some(resource_type.to_owned()),
        count: 500,
        ..Default::default()
    };
    let mut all = Vec::new();
    loop {
        let page = store.search(query.clone()).await?;
        all.extend(page.resources);
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(all),
        }
    }
}

pub trait ChangeMarker {
    /// The newest history position among `resource_types` (0 when none).
    fn latest_change(
        &self,
        resource_types: &[&str],
    ) -> impl Future<Output = StoreResult<i64>> + Send;
}

/// The search index outside of writes: rebuilding a resource's rows (after
/// the definitions change, or for data stored before the index existed),
/// and the version of the definitions the rows were built with.
pub trait SearchIndex {
    /// Replaces the index rows of `resource_type/id`, built from its version
    /// `version_id`; `false` when that is no longer the live version (the
    /// resource was deleted, or written since, and that write indexed it).
    fn replace_index(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
        entries: Vec<IndexEntry>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The version recorded by `set_index_version`, if any.
    fn index_version(&self) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    fn set_index_version(&self, version: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// Refreshes the planner's statistics (`ANALYZE`), after many rows
    /// changed at once: without them PostgreSQL can pick a plan a thousand
    /// times slower for a search (docs/search.md).
    fn analyze(&self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// A grant of sign-in as stored: the digest of its value (never the value),
/// what it is, the family it belongs to, what it grants (JSON the auth
/// crate reads), and when it expires (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGrant {
    pub digest: String,
    pub kind: String,
    pub family: String,
    pub body: String,
    pub expires_at: i64,
}

/// What redeeming a grant found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Live and unused until now; it is marked used.
    Fresh(StoredGrant),
    /// Redeemed before: a replay (its family is named, to revoke).
    Used { family: String },
    /// Unknown, or expired.
    Unknown,
}

/// The grants of sign-in (docs/sign-in.md), kept in the database so any
/// instance can redeem, once, what another issued.
pub trait GrantStore {
    /// Stores a grant, and drops those expired before `now`.
    fn put_grant(
        &self,
        grant: StoredGrant,
        now: i64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Marks the grant `digest` of `kind` used, atomically: of two
    /// redemptions at once, one gets it.
    fn redeem_grant(
        &self,
        digest: &str,
        kind: &str,
        now: i64,
    ) -> impl Future<Output = StoreResult<Redeemed>> + Send;
    /// Drops every grant of `family` (a replayed code or refresh token).
    fn revoke_family(&self, family: &str) -> impl Future<Output = StoreResult<u64>> + Send;
    /// Drops the grants of `family` of `kind` other than `keep`; `false`
    /// when `keep` itself is gone (the family was revoked).
    fn prune_family(
        &self,
        family: &str,
        kind: &str,
        keep: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// Liveness of the database connection.
pub trait StoreHealth {
    fn ping(&self) -> impl Future<Output = StoreResult<()>> + Send;
}

/// The configured backend. An enum rather than a trait object: both backends
/// are known at compile time and calls stay statically dispatched.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the database named by `url` (`sqlite:<path>` or `postgres://…`)
    /// and applies the embedded migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::open(path).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::open(url).await?))
        } else {
            Err(StoreError::Config(
                "database URL must start with sqlite: or postgres://".into(),
            ))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgresql",
        }
    }

    /// Closes every pooled connection; used at shutdown.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
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

impl ResourceRead for Store {
    async fn read(&self, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        delegate!(self, s => s.read(resource_type, id))
    }
    async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> StoreResult<Option<StoredResource>> {
        delegate!(self, s => s.vread(resource_type, id, version_id))
    }
}

impl ResourceWrite for Store {
    async fn write(&self, op: WriteOp) -> StoreResult<WriteOutcome> {
        delegate!(self, s => s.write(op))
    }
    async fn write_all(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        delegate!(self, s => s.write_all(ops))
    }
}

impl ResourceHistory for Store {
    async fn history(&self, query: HistoryQuery) -> StoreResult<HistoryPage> {
        delegate!(self, s => s.history(query))
    }
}

impl ResourceSearch for Store {
    async fn search(&self, query: SearchQuery) -> StoreResult<SearchPage> {
        delegate!(self, s => s.search(query))
    }
}

impl ChangeMarker for Store {
    async fn latest_change(&self, resource_types: &[&str]) -> StoreResult<i64> {
        delegate!(self, s => s.latest_change(resource_types))
    }
}

impl SearchIndex for Store {
    async fn replace_index(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
        entries: Vec<IndexEntry>,
    ) -> StoreResult<bool> {
        delegate!(self, s => s.replace_index(resource_type, id, version_id, entries))
    }
    async fn index_version(&self) -> StoreResult<Option<String>> {
        delegate!(self, s => s.index_version())
    }
    async fn set_index_version(&self, version: &str) -> StoreResult<()> {
        delegate!(self, s => s.set_index_version(version))
    }
    async fn analyze(&self) -> StoreResult<()> {
        delegate!(self, s => s.analyze())
    }
}

impl GrantStore for Store {
    async fn put_grant(&self, grant: StoredGrant, now: i64) -> StoreResult<()> {
        delegate!(self, s => s.put_grant(grant, now))
    }
    async fn redeem_grant(&self, digest: &str, kind: &str, now: i64) -> StoreResult<Redeemed> {
        delegate!(self, s => s.redeem_grant(digest, kind, now))
    }
    async fn revoke_family(&self, family: &str) -> StoreResult<u64> {
        delegate!(self, s => s.revoke_family(family))
    }
    async fn prune_family(&self, family: &str, kind: &str, keep: &str) -> StoreResult<bool> {
        delegate!(self, s => s.prune_family(family, kind, keep))
    }
}

impl StoreHealth for Store {
    async fn ping(&self) -> StoreResult<()> {
        delegate!(self, s => s.ping())
    }
}
