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
    /// Computes the search index rows of the body this op stores; they
    /// replace the resource's rows in the same transaction. `None`: the
    /// resource is not indexed (its old rows are removed all the same).
    pub index: Option<Indexer>,
    /// A conditional write: the search that decides, inside this write's
    /// transaction, whether it happens and to which resource (a
    /// conditional create, update, patch or delete); `id` is then used
    /// only when the write creates.
    pub matching: Option<Matching>,
    /// Says, inside the write's transaction, which notifications the change
    /// queues (subscriptions, docs/subscriptions.md); they are inserted into
    /// the outbox in the same transaction, so a committed change always has
    /// its notifications and a failed one has none. `None`: nothing queued.
    pub notify: Option<Notify>,
}

/// The change a write makes, as its [`Notify`] sees it.
pub struct Change<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    /// The live version before the change (`None`: the write creates).
    pub previous: Option<&'a StoredResource>,
    /// The body stored (`None`: the write deletes).
    pub current: Option<&'a Value>,
}

/// One notification a change queues: for which destination, of which topic,
/// and what the change was (`create`, `update`, `delete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub destination: String,
    /// The version of the destination the event is for.
    pub destination_version: i64,
    pub topic: String,
    pub interaction: &'static str,
    /// `false`: not queued in the outbox but handed back with the write's
    /// outcome (`WriteOutcome::notifications`) once it committed, for a
    /// destination delivered from memory (best effort).
    pub durable: bool,
}

/// Decides the notifications of a change, inside the write's transaction.
/// Like `Finalize`, it may run more than once and must not have side effects.
pub type Notify = Arc<dyn Fn(&Change<'_>) -> Vec<OutboxEvent> + Send + Sync>;

/// A queued notification, as the outbox holds it: the event and the version
/// of the resource it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its place in the outbox: later changes of one resource have larger
    /// numbers.
    pub seq: i64,
    pub destination: String,
    pub destination_version: i64,
    pub topic: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub interaction: String,
    /// When the change was committed, microseconds since the Unix epoch.
    pub created_at: i64,
}

/// The criteria of a conditional interaction (R4 §3.1.0.8), searched inside
/// the write's own transaction, so that two concurrent conditional creates
/// with the same criteria store one resource: SQLite applies writes one at
/// a time, and on PostgreSQL writes with equal `criteria` wait for each
/// other (a transaction-scoped advisory lock on its hash) before searching.
#[derive(Clone)]
pub struct Matching {
    /// The search; the store looks at two matches at most.
    pub query: SearchQuery,
    /// The criteria as one canonical text: equal for equal criteria.
    pub criteria: String,
    /// For a create with one match: answer it and write nothing (`true`), or
    /// refuse with `MatchAppeared` (`false`: a transaction that searched
    /// before it started and has already given the new id to references).
    pub answer_existing: bool,
    /// Asked, with the id of the resource an update, patch or delete turns
    /// out to write, whether the caller may write it; a refusal stops the
    /// write. Access rules are the caller's; the store only knows the id.
    pub check_target: Option<TargetCheck>,
    /// The match a transaction found when it searched before it ran
    /// (`Some(None)`: none): a different one at the write fails it with
    /// `MatchChanged`, since its other entries were prepared for that one.
    pub expected: Option<Option<String>>,
}

/// Decides whether a conditional write may write the resource with this id.
pub type TargetCheck = Arc<dyn Fn(&str) -> Result<(), Refusal> + Send + Sync>;

impl std::fmt::Debug for Matching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matching")
            .field("criteria", &self.criteria)
            .field("answer_existing", &self.answer_existing)
            .finish_non_exhaustive()
    }
}

/// What a resource is found by, computed by the caller from the body about
/// to be stored (resource type, final body).
pub type Indexer =
    std::sync::Arc<dyn Fn(&str, &serde_json::Value) -> Vec<IndexEntry> + Send + Sync>;

/// One search index row: the parameter (`name`, `birthdate`) and its value
/// in the column form of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEntry {
    String {
        param: String,
        /// Lower case, accents removed: what a default (prefix) match uses.
        normalized: String,
        exact: String,
    },
    Token {
        param: String,
        system: Option<String>,
        code: Option<String>,
        /// Display or text, normalized like a string (`:text`).
        text: Option<String>,
    },
    /// A half-open range in microseconds since the epoch.
    Date {
        param: String,
        low: i64,
        high: i64,
    },
    Number {
        param: String,
        value: f64,
    },
    Quantity {
        param: String,
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        param: String,
        uri: String,
    },
    Reference {
        param: String,
        target_type: Option<String>,
        target_id: Option<String>,
        /// The reference as written (absolute URLs, canonicals).
        url: String,
    },
    /// A composite parameter's pair of values taken from one element
    /// (R4 §3.1.1.4.12): a token or reference, then its partner.
    Composite {
        param: String,
        first: CompositeFirst,
        second: CompositeSecond,
    },
}

/// The first value of a composite pair.
#[derive(Debug, Clone, PartialEq)]
pub enum CompositeFirst {
    Token {
        system: Option<String>,
        code: String,
    },
    Reference {
        target_type: Option<String>,
        target_id: String,
    },
}

/// The second value of a composite pair.
#[derive(Debug, Clone, PartialEq)]
pub enum CompositeSecond {
    Token {
        system: Option<String>,
        code: String,
    },
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Date {
        low: i64,
        high: i64,
    },
    String {
        normalized: String,
        exact: String,
    },
}

/// The table an index kind lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    String,
    Token,
    Date,
    Number,
    Quantity,
    Uri,
    Reference,
    Composite,
}

impl IndexKind {
    /// The `kind` column of its rows in `search_index` (a partial index each).
    pub(crate) fn code(self) -> i64 {
        match self {
            IndexKind::String => 1,
            IndexKind::Token => 2,
            IndexKind::Date => 3,
            IndexKind::Number => 4,
            IndexKind::Quantity => 5,
            IndexKind::Uri => 6,
            IndexKind::Reference => 7,
            IndexKind::Composite => 8,
        }
    }
}

/// One condition on a search parameter's index rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `normalized` starts with the value (already normalized).
    StringStarts { param: String, value: String },
    /// `normalized` contains the value.
    StringContains { param: String, value: String },
    /// `exact` equals the value.
    StringExact { param: String, value: String },
    /// A token: `system` `None` = any system, `Some(None)` = no system.
    Token {
        param: String,
        system: Option<Option<String>>,
        code: Option<String>,
    },
    /// Token text (`:text`): the normalized display/text starts with the value.
    TokenText { param: String, value: String },
    /// The stored range `[low, high)` relates to `[start, end)` as `op` says.
    Date {
        param: String,
        op: RangeOp,
        start: i64,
        end: i64,
    },
    /// A number (or a quantity's value) in `[low, high)`, or compared.
    Number {
        param: String,
        kind: IndexKind,
        op: RangeOp,
        low: f64,
        high: f64,
        /// Quantity only: `system` and/or `code` to match (`None` = any).
        system: Option<String>,
        code: Option<String>,
    },
    /// A reference to `target_id` (of `target_type` when given).
    Reference {
        param: String,
        target_type: Option<String>,
        target_id: String,
    },
    /// A reference written as this URL (absolute or canonical).
    ReferenceUrl { param: String, url: String },
    /// A uri: equal, or (`below`) starting with, or (`above`) a prefix of the value.
    Uri {
        param: String,
        op: UriOp,
        value: String,
    },
    /// The resource has (`false`) or lacks (`true`) any row of the parameter.
    Missing {
        param: String,
        kind: IndexKind,
        missing: bool,
    },
    /// Resources with no row matching the inner condition (token `:not`).
    Not(Box<Condition>),
    /// A chain (R4 §3.1.1.4.13): a reference in `param` to a current
    /// `target_type` resource that matches every filter of `filters`.
    Chain {
        param: String,
        target_type: String,
        filters: Vec<Filter>,
    },
    /// A reverse chain, `_has` (R4 §3.1.1.4.14): some current
    /// `source_type` resource matching every filter of `filters` refers to
    /// this one in its `param`.
    Has {
        source_type: String,
        param: String,
        filters: Vec<Filter>,
    },
    /// A composite pair: the first value matches and, in the same pair, the
    /// second one does.
    Composite {
        param: String,
        first: CompositeFirst,
        /// The first's system must match (`Some`), or any (`None`).
        first_system_given: bool,
        second: CompositeTest,
    },
}

/// How the second value of a composite pair is tested.
#[derive(Debug, Clone, PartialEq)]
pub enum CompositeTest {
    Token {
        system: Option<String>,
        code: String,
    },
    Number {
        op: RangeOp,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Date {
        op: RangeOp,
        start: i64,
        end: i64,
    },
    StringStarts(String),
}

/// How a stored range `[low, high)` must relate to a searched one
/// `[start, end)` (R4 §3.1.1.4.1 prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// `eq`: the stored range lies within the searched one.
    Within,
    /// `ne`: not within.
    NotWithin,
    /// `gt`: the stored range goes past the end of the searched one.
    EndsAfter,
    /// `lt`: the stored range starts before the searched one.
    StartsBefore,
    /// `ge`: within, or ends after.
    WithinOrAfter,
    /// `le`: within, or starts before.
    WithinOrBefore,
    /// `sa`: starts after the searched range ends.
    StartsAfter,
    /// `eb`: ends before the searched range starts.
    EndsBefore,
    /// `ap`: overlaps the searched range.
    Overlaps,
}

/// How a uri is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriOp {
    Equal,
    Below,
    Above,
}

/// Conditions ORed (a parameter with comma-separated values); the filters
/// of a search are ANDed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub any_of: Vec<Condition>,
}

impl std::fmt::Debug for WriteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOp")
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("if_match", &self.if_match)
            .field("matching", &self.matching.as_ref().map(|m| &m.criteria))
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
    /// The change's notifications that are not queued in the outbox
    /// (`OutboxEvent::durable` false), for the caller to deliver now that
    /// the write committed.
    pub notifications: Vec<OutboxEvent>,
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
    /// The order resources were first stored in (their storage key, which
    /// an update or a delete keeps): the default, and the cheapest to page,
    /// since a search's matches are found by that key (docs/search.md).
    #[default]
    Created,
    Id,
    LastUpdated,
}

/// How far a search or a history counts its matches (`_total`,
/// docs/search.md "Totals").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TotalMode {
    /// No count (`_total=none`; what internal searches use).
    #[default]
    None,
    /// An exact count of at most [`BOUNDED_TOTAL`] matches, the default of
    /// a REST search: a search with more has no total, so a broad search
    /// costs its page plus a bounded count.
    Bounded,
    /// Every match counted, however many (`_total=accurate`).
    Accurate,
}

/// The most matches a [`TotalMode::Bounded`] count reads.
pub const BOUNDED_TOTAL: i64 = 1000;

/// One key of a `_sort` by search parameters (R4 §3.1.1.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    /// The logical id.
    Id,
    /// The last update.
    LastUpdated,
    /// A search parameter's index rows of one kind (not `Composite`): its
    /// lowest value ascending, its highest descending (for a date, the
    /// earliest start and the latest end). A resource without one sorts
    /// after every resource with one, in either direction.
    Param { param: String, kind: IndexKind },
}

/// A sort key and its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortField {
    pub by: SortBy,
    pub descending: bool,
}

/// A search over current, non-deleted versions.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// `None` for a system-level search.
    pub resource_type: Option<String>,
    /// A system-level search limited to these types (`_type`); empty: any.
    pub types: Vec<String>,
    /// `_id` (any of).
    pub ids: Option<Vec<String>>,
    pub last_updated: Vec<TimeBound>,
    pub sort: SortKey,
    pub descending: bool,
    /// A `_sort` by search parameters or by several keys; when it is not
    /// empty it replaces `sort` and `descending`, and ties are broken by
    /// creation order.
    pub sort_by: Vec<SortField>,
    /// Page size; the caller has clamped it.
    pub count: u32,
    pub cursor: Option<Cursor>,
    /// Whether and how far to count the matches (`_total`).
    pub total: TotalMode,
    /// Search parameter filters, all of which must hold.
    pub filters: Vec<Filter>,
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
