//! What goes into and comes out of the store.

use std::sync::Arc;

use serde_json::Value;

use crate::cursor::Cursor;
use crate::error::Refusal;

/// One version of a resource as stored. `body` is the full JSON text including
/// `id` and `meta`, so the read path can send it without re-serialising.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    /// Microseconds since the Unix epoch, truncated to milliseconds.
    pub last_updated: i64,
    pub deleted: bool,
    /// Empty for a deletion.
    pub body: String,
}

impl StoredResource {
    /// `meta.lastUpdated` as FHIR `instant` text.
    pub fn last_updated_text(&self) -> String {
        crate::instant::format_micros(self.last_updated)
    }
}

/// Computes a new body from the current version inside the write transaction
/// (JSON Patch, server-side rewriting). It may be called more than once if the
/// store retries after contention, so it must not have side effects.
pub type Transform = Arc<dyn Fn(&StoredResource) -> Result<Value, Refusal> + Send + Sync>;

/// Last look at a body before it is stored, inside the write transaction:
/// receives the new body and the current live version (if any) and returns
/// the body to store. The server uses it for rules that need the previous
/// version (keeping a hashed secret, validating references). Like
/// `Transform`, it may run more than once and must not have side effects.
pub type Finalize =
    Arc<dyn Fn(Value, Option<&StoredResource>) -> Result<Value, Refusal> + Send + Sync>;

/// What a write does.
#[derive(Clone)]
pub enum WriteKind {
    /// Create with the given id; fails with `AlreadyExists` if a live resource has it.
    Create(Value),
    /// Create or replace (FHIR update).
    Put(Value),
    /// Replace with a body computed from the current version; the resource must exist.
    Modify(Transform),
    /// Delete; deleting a deleted resource changes nothing.
    Delete,
}

impl std::fmt::Debug for WriteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteKind::Create(_) => f.write_str("Create"),
            WriteKind::Put(_) => f.write_str("Put"),
            WriteKind::Modify(_) => f.write_str("Modify"),
            WriteKind::Delete => f.write_str("Delete"),
        }
    }
}

/// One write of one resource.
#[derive(Clone)]
pub struct WriteOp {
    pub resource_type: String,
    pub id: String,
    pub kind: WriteKind,
    /// `If-Match`: the version the client expects to be current.
    pub if_match: Option<i64>,
    /// Applied to every body this op stores (not to deletions).
    pub finalize: Option<Finalize>,
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOp")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("if_match", &self.if_match)
            .finish_non_exhaustive()
    }
}

/// The result of one write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The version written (for a delete, the tombstone; for a no-op delete, the existing tombstone).
    pub resource: StoredResource,
    /// True when the write brought a resource into existence (create, or update of a missing/deleted id).
    pub created: bool,
    /// False when nothing was written (delete of an already deleted resource).
    pub changed: bool,
}

/// A `_lastUpdated` bound, already turned into half-open ranges by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// `last_updated >= micros`
    AtOrAfter(i64),
    /// `last_updated < micros`
    Before(i64),
}

/// Sort order of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Id,
    LastUpdated,
}

/// A search over current, non-deleted versions.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// `None` for a system-level search.
    pub resource_type: Option<String>,
    /// `_id` (any of).
    pub ids: Option<Vec<String>>,
    pub last_updated: Vec<TimeBound>,
    pub sort: SortKey,
    pub descending: bool,
    /// Page size; the caller has clamped it.
    pub count: u32,
    pub cursor: Option<Cursor>,
    /// Count every match (`_total=accurate`).
    pub with_total: bool,
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    pub resources: Vec<StoredResource>,
    pub total: Option<i64>,
    pub next: Option<Cursor>,
    pub previous: Option<Cursor>,
}

/// Which resources a history covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    Instance { resource_type: String, id: String },
    Type { resource_type: String },
    System,
}

/// A history request, newest first.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// `_since`: only versions at or after this instant (micros).
    pub since: Option<i64>,
    pub count: u32,
    /// Continue below this history position (from a `next` link).
    pub cursor: Option<Cursor>,
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<StoredResource>,
    pub total: Option<i64>,
    pub next: Option<Cursor>,
}
