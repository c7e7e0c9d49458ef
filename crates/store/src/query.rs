//! SQL text for search and history, shared by both backends. Placeholders are
//! `$N`, which PostgreSQL takes by number and SQLite as names (bound by
//! position in `sqlite_writer::bind_values`, as they appear in order).

use crate::cursor::Cursor;
use crate::error::StoreError;
use crate::model::{
    CompositeFirst, CompositeSecond, CompositeTest, Condition, Filter, HistoryQuery, HistoryScope,
    IndexEntry, IndexKind, RangeOp, SearchQuery, SortBy, SortField, SortKey, StoredResource,
    TimeBound, TotalMode, UriOp, BOUNDED_TOTAL,
};

/// A value to bind, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
    /// NULL of a column's type, bound rather than written into the text so
    /// that the statement's shape does not depend on which values are there.
    NullText,
    NullInt,
    NullFloat,
}

/// SQL under construction with its binds.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        self.text.push('$');
        self.text.push_str(&self.binds.len().to_string());
        self
    }

    /// Appends `(…)`, a placeholder for each of `values`: an `IN` list.
    fn bind_list<'v>(&mut self, values: impl IntoIterator<Item = &'v str>) -> &mut Self {
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(Bind::Text(value.to_owned()));
        }
        self.push(")")
    }
}

pub(crate) const COLUMNS: &str = "resource_type, id, version_id, last_updated, deleted, body";

fn sort_code(sort: SortKey) -> char {
    match sort {
        SortKey::Created => 'c',
        SortKey::Id => 'i',
        SortKey::LastUpdated => 'u',
    }
}

/// Rows are fetched in this order; `backwards` says the page must be flipped
/// afterwards. Each row of `select` ends with its `res_key`, then, with
/// `Total::InPage`, the count of every match.
pub(crate) struct SearchPlan {
    pub select: Sql,
    pub total: Total,
    pub backwards: bool,
    /// Under `sort_by`: the kind of each sort value column (`s0`, `s1`, …)
    /// the rows carry after `res_key`.
    pub sort_values: Vec<SortValue>,
}

/// Where a search's total comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Total {
    /// No total (`_total=none`).
    Skip,
    /// The `count` statement, unless the page holds every match.
    Count,
    /// A column of the page's rows; the `count` statement for a page with
    /// no row to carry it.
    InPage,
}

/// The resource types a search is limited to (empty: any). A listing of
/// index rows reads only theirs: with `_type=A,B`, the rows of A and B
/// rather than a scan of the kind's whole index.
fn types(q: &SearchQuery) -> Vec<&str> {
    match &q.resource_type {
        Some(rt) => vec![rt.as_str()],
        None => q.types.iter().map(String::as_str).collect(),
    }
}

/// Whether a filter is made of equalities only (see `narrow`).
fn narrow_filter(filter: &Filter) -> bool {
    !filter.any_of.is_empty() && filter.any_of.iter().all(narrow)
}

fn push_filters(sql: &mut Sql, q: &SearchQuery) {
    sql.push(" WHERE deleted = FALSE");
    // With search parameters, the index rows they select are the way in
    // (by `res_key`): `resource_type || ''` keeps the planner from walking
    // every resource of the type in page order instead, which SQLite
    // otherwise prefers for `ORDER BY … LIMIT n` (docs/search.md).
    let type_column = if q.filters.is_empty() {
        " AND resource_type = "
    } else {
        " AND resource_type || '' = "
    };
    if let Some(rt) = &q.resource_type {
        sql.push(type_column).bind(Bind::Text(rt.clone()));
    }
    if !q.types.is_empty() {
        sql.push(" AND resource_type IN ")
            .bind_list(q.types.iter().map(String::as_str));
    }
    if let Some(ids) = &q.ids {
        sql.push(" AND id IN ")
            .bind_list(ids.iter().map(String::as_str));
    }
    for bound in &q.last_updated {
        match bound {
            TimeBound::AtOrAfter(t) => sql.push(" AND last_updated >= ").bind(Bind::Int(*t)),
            TimeBound::Before(t) => sql.push(" AND last_updated < ").bind(Bind::Int(*t)),
        };
    }
    push_filter_list(sql, q, q.filters.iter());
}

/// The search a chain or `_has` runs on another type: its filters over the
/// current resources of `resource_type`.
fn inner_query(resource_type: &str, filters: &[Filter]) -> SearchQuery {
    SearchQuery {
        resource_type: Some(resource_type.to_owned()),
        filters: filters.to_vec(),
        ..SearchQuery::default()
    }
}

/// Whether the index rows alone decide which resources a search matches:
/// only the live version of a resource has index rows, under its own type,
/// so when a narrow filter of one condition lists one type's rows, its
/// matches need no look at their table rows (which would read every
/// candidate's). Not so with several types, `_id` or `_lastUpdated`.
fn rows_decide(q: &SearchQuery) -> bool {
    q.filters.iter().any(way_in)
        && types(q).len() == 1
        && (q.types.is_empty() || q.resource_type.is_none())
        && q.ids.is_none()
        && q.last_updated.is_empty()
}

/// A filter of one narrow condition: its index rows are a way in.
fn way_in(filter: &Filter) -> bool {
    matches!(filter.any_of.as_slice(), [c] if narrow(c))
}

/// The keys of the resources a search matches (when `rows_decide`): the
/// rows of the filters that are a way in, intersected, then the other
/// filters checked on each key.
fn push_matches(sql: &mut Sql, q: &SearchQuery) {
    let types = types(q);
    let (ways_in, rest): (Vec<&Filter>, Vec<&Filter>) = q.filters.iter().partition(|f| way_in(f));
    // Each operand is a derived table (`SELECT res_key FROM (…) AS r`):
    // SQLite takes no parenthesized operands in a compound SELECT.
    sql.push(if ways_in.len() == 1 {
        "SELECT res_key FROM (SELECT DISTINCT res_key FROM "
    } else {
        "SELECT res_key FROM (SELECT res_key FROM "
    });
    for (i, filter) in ways_in.iter().enumerate() {
        if i > 0 {
            sql.push(" INTERSECT SELECT res_key FROM ");
        }
        push_condition(sql, Lookup::Rows, &types, &filter.any_of[0]);
        sql.push(" AS r");
    }
    // The probes of the other filters name the candidate `resource`.
    sql.push(") AS resource WHERE TRUE");
    push_filter_list(sql, q, rest.into_iter());
}

/// ` AND (…)` for each filter. A filter of equalities (a code, a reference,
/// a name) selects few rows, so its index rows are the way in; a broad one
/// (a date range, a number range, `:missing`, `:not`, `:contains`) then only
/// checks each candidate's own rows (`Lookup::Probe`) instead of listing
/// every resource it matches. With no narrow filter, every filter lists.
fn push_filter_list<'f>(sql: &mut Sql, q: &SearchQuery, filters: impl Iterator<Item = &'f Filter>) {
    let has_narrow = q.filters.iter().any(narrow_filter);
    let types = types(q);
    for filter in filters {
        let lookup = if has_narrow && !narrow_filter(filter) {
            Lookup::Probe
        } else {
            Lookup::List
        };
        sql.push(" AND (");
        if push_chains(sql, lookup, &types, filter) {
            sql.push(")");
            continue;
        }
        for (i, condition) in filter.any_of.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            push_condition(sql, lookup, &types, condition);
        }
        if filter.any_of.is_empty() {
            sql.push("FALSE");
        }
        sql.push(")");
    }
}

/// A filter of several chains through one parameter (a chain without a
/// type, through each target that has the next parameter) as one lookup:
/// the reference rows whose (target type, target id) is among the matching
/// targets of every type. An `OR` of one subquery per type would read every
/// candidate on PostgreSQL, which plans an `OR` of `IN`s as a check per row.
/// False, writing nothing, for any other filter.
fn push_chains(sql: &mut Sql, lookup: Lookup, types: &[&str], filter: &Filter) -> bool {
    let chains: Vec<(&String, &String, &Vec<Filter>)> = filter
        .any_of
        .iter()
        .filter_map(|c| match c {
            Condition::Chain {
                param,
                target_type,
                filters,
            } => Some((param, target_type, filters)),
            _ => None,
        })
        .collect();
    let Some((param, _, _)) = chains.first() else {
        return false;
    };
    if chains.len() < 2
        || chains.len() != filter.any_of.len()
        || chains.iter().any(|(p, _, _)| p != param)
    {
        return false;
    }
    index_rows(sql, lookup, types, IndexKind::Reference, param);
    // The ids alone first: SQLite seeks the reference index by `target_id`
    // for a plain `IN`, but for a row value `IN` it reads every reference
    // row of the parameter (20 times slower on Synthea's Observations).
    // The pairs then keep a target of another type with the same id out.
    for pairs in [false, true] {
        sql.push(if pairs {
            " AND (target_type, target_id) IN ("
        } else {
            " AND target_id IN ("
        });
        for (i, (_, target_type, filters)) in chains.iter().enumerate() {
            if i > 0 {
                sql.push(" UNION ALL ");
            }
            sql.push("SELECT ");
            if pairs {
                sql.bind(Bind::Text((*target_type).clone())).push(", ");
            }
            sql.push("id FROM resource");
            push_filters(sql, &inner_query(target_type, filters));
        }
        sql.push(")");
    }
    sql.push(")");
    true
}

/// How a condition reaches the index rows.
#[derive(Clone, Copy)]
enum Lookup {
    /// Every resource whose rows match (`res_key IN (SELECT …)`).
    List,
    /// Whether this resource's own rows match (`EXISTS (… WHERE res_key =
    /// resource.res_key …)`), through the index by `res_key`.
    Probe,
    /// The keys of the matching rows, as a derived table (`(SELECT res_key
    /// FROM search_index WHERE …)`); only for narrow conditions.
    Rows,
}

/// Whether a condition is an equality on an indexed value: few rows match.
fn narrow(condition: &Condition) -> bool {
    matches!(
        condition,
        Condition::Token { code: Some(_), .. }
            | Condition::Reference { .. }
            | Condition::ReferenceUrl { .. }
            | Condition::StringExact { .. }
            | Condition::StringStarts { .. }
            | Condition::Uri {
                op: UriOp::Equal,
                ..
            }
            | Condition::Composite { .. }
    )
}

/// `res_key IN (SELECT res_key FROM search_index WHERE <kind, type and param> AND `…
/// (or the `EXISTS` form of a probe). The kind is a literal, so the planner
/// picks that kind's partial index.
fn index_rows(sql: &mut Sql, lookup: Lookup, types: &[&str], kind: IndexKind, param: &str) {
    match lookup {
        Lookup::List => sql.push("res_key IN (SELECT res_key FROM search_index WHERE kind = "),
        Lookup::Probe => sql.push(
            "EXISTS (SELECT 1 FROM search_index WHERE search_index.res_key = resource.res_key AND kind = ",
        ),
        Lookup::Rows => sql.push("(SELECT res_key FROM search_index WHERE kind = "),
    };
    sql.push(&kind.code().to_string()).push(" AND ");
    // A probe seeks the candidate's rows of that kind and parameter in the
    // index by key (`search_index_key`, which also holds the date and number
    // columns, so a range is checked in the index alone); the key already
    // fixes the resource type.
    if matches!(lookup, Lookup::List | Lookup::Rows) {
        match types {
            [] => {}
            [only] => {
                sql.push("resource_type = ")
                    .bind(Bind::Text((*only).to_owned()))
                    .push(" AND ");
            }
            several => {
                sql.push("resource_type IN ")
                    .bind_list(several.iter().copied())
                    .push(" AND ");
            }
        }
    }
    sql.push("param = ").bind(Bind::Text(param.to_owned()));
}

/// The SQL of a stored range `[lo, hi)` (column expressions) against a
/// searched one (R4 §3.1.1.4.1).
fn push_range(sql: &mut Sql, lo: &str, hi: &str, op: RangeOp, start: Bind, end: Bind) {
    // The stored range lies within the searched one (`eq`).
    let within = |sql: &mut Sql, start: Bind, end: Bind| {
        sql.push(&format!("({lo} >= "))
            .bind(start)
            .push(&format!(" AND {hi} <= "))
            .bind(end)
            .push(")");
    };
    match op {
        RangeOp::Within => {
            sql.push(" AND ");
            within(sql, start, end);
        }
        RangeOp::NotWithin => {
            sql.push(" AND NOT ");
            within(sql, start, end);
        }
        RangeOp::EndsAfter => {
            sql.push(&format!(" AND {hi} > ")).bind(end);
        }
        RangeOp::StartsBefore => {
            sql.push(&format!(" AND {lo} < ")).bind(start);
        }
        RangeOp::WithinOrAfter => {
            sql.push(&format!(" AND ({hi} > "))
                .bind(end.clone())
                .push(" OR ");
            within(sql, start, end);
            sql.push(")");
        }
        RangeOp::WithinOrBefore => {
            sql.push(&format!(" AND ({lo} < "))
                .bind(start.clone())
                .push(" OR ");
            within(sql, start, end);
            sql.push(")");
        }
        RangeOp::StartsAfter => {
            sql.push(&format!(" AND {lo} >= ")).bind(end);
        }
        RangeOp::EndsBefore => {
            sql.push(&format!(" AND {hi} <= ")).bind(start);
        }
        RangeOp::Overlaps => {
            sql.push(&format!(" AND {lo} < "))
                .bind(end)
                .push(&format!(" AND {hi} > "))
                .bind(start);
        }
    }
}

/// One condition, as a predicate on the `resource` row.
fn push_condition(sql: &mut Sql, lookup: Lookup, types: &[&str], condition: &Condition) {
    match condition {
        Condition::StringStarts { param, value } => {
            index_rows(sql, lookup, types, IndexKind::String, param);
            push_prefix(sql, "text_norm", value);
            sql.push(")");
        }
        Condition::StringContains { param, value } => {
            index_rows(sql, lookup, types, IndexKind::String, param);
            sql.push(" AND text_norm LIKE ")
                .bind(Bind::Text(format!("%{}%", like_escape(value))))
                .push(" ESCAPE '\\')");
        }
        Condition::StringExact { param, value } => {
            index_rows(sql, lookup, types, IndexKind::String, param);
            sql.push(" AND text_exact = ")
                .bind(Bind::Text(value.clone()))
                .push(")");
        }
        Condition::Token {
            param,
            system,
            code,
        } => {
            index_rows(sql, lookup, types, IndexKind::Token, param);
            if let Some(code) = code {
                sql.push(" AND code = ").bind(Bind::Text(code.clone()));
            }
            match system {
                None => {}
                Some(None) => {
                    sql.push(" AND system IS NULL");
                }
                Some(Some(system)) => {
                    sql.push(" AND system = ").bind(Bind::Text(system.clone()));
                }
            }
            sql.push(")");
        }
        Condition::TokenText { param, value } => {
            index_rows(sql, lookup, types, IndexKind::Token, param);
            push_prefix(sql, "text_norm", value);
            sql.push(")");
        }
        Condition::Date {
            param,
            op,
            start,
            end,
        } => {
            index_rows(sql, lookup, types, IndexKind::Date, param);
            push_range(sql, "low", "high", *op, Bind::Int(*start), Bind::Int(*end));
            sql.push(")");
        }
        Condition::Number {
            param,
            kind,
            op,
            low,
            high,
            system,
            code,
        } => {
            index_rows(sql, lookup, types, *kind, param);
            // A stored number is a point: its range is [value, value].
            push_number(sql, *op, *low, *high);
            if let Some(system) = system {
                sql.push(" AND system = ").bind(Bind::Text(system.clone()));
            }
            if let Some(code) = code {
                sql.push(" AND code = ").bind(Bind::Text(code.clone()));
            }
            sql.push(")");
        }
        Condition::Reference {
            param,
            target_type,
            target_id,
        } => {
            index_rows(sql, lookup, types, IndexKind::Reference, param);
            sql.push(" AND target_id = ")
                .bind(Bind::Text(target_id.clone()));
            if let Some(t) = target_type {
                sql.push(" AND target_type = ").bind(Bind::Text(t.clone()));
            }
            sql.push(")");
        }
        Condition::ReferenceUrl { param, url } => {
            index_rows(sql, lookup, types, IndexKind::Reference, param);
            sql.push(" AND text_exact = ")
                .bind(Bind::Text(url.clone()))
                .push(")");
        }
        Condition::Uri { param, op, value } => {
            index_rows(sql, lookup, types, IndexKind::Uri, param);
            match op {
                UriOp::Equal => sql
                    .push(" AND text_exact = ")
                    .bind(Bind::Text(value.clone())),
                UriOp::Below => push_prefix(sql, "text_exact", value),
                // The stored uri is a prefix of the value (compared as is:
                // SQLite's LIKE would ignore the case of ASCII letters).
                UriOp::Above => sql
                    .push(" AND text_exact = substr(")
                    .bind(Bind::Text(value.clone()))
                    .push(", 1, length(text_exact))"),
            };
            sql.push(")");
        }
        Condition::Missing {
            param,
            kind,
            missing,
        } => {
            if *missing {
                sql.push("NOT ");
            }
            index_rows(sql, lookup, types, *kind, param);
            sql.push(")");
        }
        Condition::Not(inner) => {
            sql.push("NOT (");
            push_condition(sql, lookup, types, inner);
            sql.push(")");
        }
        Condition::Chain {
            param,
            target_type,
            filters,
        } => {
            // The reference rows of `param` whose target is one of the
            // current target resources that match the inner filters.
            index_rows(sql, lookup, types, IndexKind::Reference, param);
            sql.push(" AND target_type = ")
                .bind(Bind::Text(target_type.clone()))
                .push(" AND target_id IN (SELECT id FROM resource");
            push_filters(sql, &inner_query(target_type, filters));
            sql.push("))");
        }
        Condition::Has {
            source_type,
            param,
            filters,
        } => {
            // By id, so listed whatever the lookup: the resources of the
            // searched type that a matching source resource refers to.
            sql.push("res_key IN (SELECT res_key FROM resource WHERE deleted = FALSE");
            match types {
                [] => {}
                [only] => {
                    sql.push(" AND resource_type = ")
                        .bind(Bind::Text((*only).to_owned()));
                }
                several => {
                    sql.push(" AND resource_type IN ")
                        .bind_list(several.iter().copied());
                }
            }
            sql.push(" AND id IN (SELECT target_id FROM search_index WHERE kind = ")
                .push(&IndexKind::Reference.code().to_string())
                .push(" AND resource_type = ")
                .bind(Bind::Text(source_type.clone()))
                .push(" AND param = ")
                .bind(Bind::Text(param.clone()));
            match types {
                [] => {}
                [only] => {
                    sql.push(" AND target_type = ")
                        .bind(Bind::Text((*only).to_owned()));
                }
                several => {
                    sql.push(" AND target_type IN ")
                        .bind_list(several.iter().copied());
                }
            }
            sql.push(" AND res_key IN (SELECT res_key FROM resource");
            push_filters(sql, &inner_query(source_type, filters));
            sql.push(")))");
        }
        Condition::Composite {
            param,
            first,
            first_system_given,
            second,
        } => {
            index_rows(sql, lookup, types, IndexKind::Composite, param);
            // Where each value sits in the row: see `entry_columns`.
            let (second_system, second_code) = match first {
                CompositeFirst::Token { system, code } => {
                    sql.push(" AND code = ").bind(Bind::Text(code.clone()));
                    if *first_system_given {
                        match system {
                            Some(s) => sql.push(" AND system = ").bind(Bind::Text(s.clone())),
                            None => sql.push(" AND system IS NULL"),
                        };
                    }
                    ("target_type", "target_id")
                }
                CompositeFirst::Reference {
                    target_type,
                    target_id,
                } => {
                    sql.push(" AND target_id = ")
                        .bind(Bind::Text(target_id.clone()));
                    if let Some(t) = target_type {
                        sql.push(" AND target_type = ").bind(Bind::Text(t.clone()));
                    }
                    ("system", "code")
                }
            };
            match second {
                CompositeTest::Token { system, code } => {
                    sql.push(&format!(" AND {second_code} = "))
                        .bind(Bind::Text(code.clone()));
                    if let Some(s) = system {
                        sql.push(&format!(" AND {second_system} = "))
                            .bind(Bind::Text(s.clone()));
                    }
                }
                CompositeTest::Number {
                    op,
                    low,
                    high,
                    system,
                    code,
                } => {
                    push_number(sql, *op, *low, *high);
                    if let Some(s) = system {
                        sql.push(" AND text_norm = ").bind(Bind::Text(s.clone()));
                    }
                    if let Some(c) = code {
                        sql.push(" AND text_exact = ").bind(Bind::Text(c.clone()));
                    }
                }
                CompositeTest::Date { op, start, end } => {
                    push_range(sql, "low", "high", *op, Bind::Int(*start), Bind::Int(*end));
                }
                CompositeTest::StringStarts(value) => {
                    push_prefix(sql, "text_norm", value);
                }
            }
            sql.push(")");
        }
    }
}

/// ` AND <column> >= <value> AND <column> < <successor>`: the values that
/// start with `value`, as a range of the column's index. Both backends
/// compare these columns by code point (SQLite's BINARY collation; the
/// PostgreSQL columns are `COLLATE "C"`, migration 6), so the range holds
/// exactly the values with that prefix, case and all. A LIKE would not use
/// the index, and SQLite's ignores the case of ASCII letters.
fn push_prefix<'s>(sql: &'s mut Sql, column: &str, value: &str) -> &'s mut Sql {
    sql.push(&format!(" AND {column} >= "))
        .bind(Bind::Text(value.to_owned()));
    if let Some(next) = prefix_successor(value) {
        sql.push(&format!(" AND {column} < "))
            .bind(Bind::Text(next));
    }
    sql
}

/// The least string greater than every string that starts with `prefix`
/// (its last character that can be incremented, incremented), or `None`
/// when every string is.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `%`, `_` and `\` in a value are literal in a LIKE pattern.
fn like_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A stored number (a point) against a searched range and prefix.
fn push_number(sql: &mut Sql, op: RangeOp, low: f64, high: f64) {
    let (start, end) = (Bind::Float(low), Bind::Float(high));
    match op {
        RangeOp::Within => sql
            .push(" AND number >= ")
            .bind(start)
            .push(" AND number < ")
            .bind(end),
        RangeOp::NotWithin => sql
            .push(" AND NOT (number >= ")
            .bind(start)
            .push(" AND number < ")
            .bind(end)
            .push(")"),
        RangeOp::EndsAfter | RangeOp::StartsAfter => sql.push(" AND number > ").bind(end),
        RangeOp::StartsBefore | RangeOp::EndsBefore => sql.push(" AND number < ").bind(start),
        RangeOp::WithinOrAfter => sql.push(" AND number >= ").bind(start),
        RangeOp::WithinOrBefore => sql.push(" AND number <= ").bind(end),
        RangeOp::Overlaps => sql
            .push(" AND number >= ")
            .bind(start)
            .push(" AND number <= ")
            .bind(end),
    };
}

/// Most rows one INSERT statement carries (binds stay far below the
/// backends' limits).
const ROWS_PER_INSERT: usize = 256;

/// A row of `index_inserts` that is not there: one NULL per column.
const PADDING_ROW: &str =
    "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

/// The INSERT statements of a resource's index rows: one per
/// `ROWS_PER_INSERT` rows, all kinds together. Each statement is written for
/// a power-of-two number of rows, the unused ones NULL and skipped,
/// so that every write reuses one of nine prepared statements instead of
/// preparing one of its own (and pushing the hot statements out of the
/// connection's statement cache). SQLite and PostgreSQL both name the
/// columns of a VALUES list `column1`, `column2`, …
/// (https://www.sqlite.org/lang_select.html#values,
/// https://www.postgresql.org/docs/current/queries-values.html).
pub(crate) fn index_inserts(key: i64, resource_type: &str, entries: &[IndexEntry]) -> Vec<Sql> {
    let mut out = Vec::new();
    for chunk in entries.chunks(ROWS_PER_INSERT) {
        let mut sql = Sql::new(
            "INSERT INTO search_index (res_key, resource_type, param, kind, text_norm, text_exact, \
             system, code, low, high, number, target_type, target_id) SELECT * FROM (VALUES ",
        );
        // $1 and $2, the key and the type, are bound once and named in
        // every row; padding rows are NULLs, typed by the real rows.
        sql.binds.push(Bind::Int(key));
        sql.binds.push(Bind::Text(resource_type.to_owned()));
        for i in 0..chunk.len().next_power_of_two() {
            if i > 0 {
                sql.push(", ");
            }
            match chunk.get(i) {
                Some(entry) => {
                    sql.push("($1, $2");
                    for column in entry_columns(entry) {
                        sql.push(", ").bind(column);
                    }
                    sql.push(")");
                }
                None => {
                    sql.push(PADDING_ROW);
                }
            }
        }
        sql.push(") AS v WHERE column1 IS NOT NULL");
        out.push(sql);
    }
    out
}

/// The columns of one index row; `None` is NULL.
#[derive(Default)]
struct Row {
    text_norm: Option<String>,
    text_exact: Option<String>,
    system: Option<String>,
    code: Option<String>,
    low: Option<i64>,
    high: Option<i64>,
    number: Option<f64>,
    target_type: Option<String>,
    target_id: Option<String>,
}

/// param, kind, then the columns of `Row` in table order.
fn entry_columns(entry: &IndexEntry) -> Vec<Bind> {
    let (param, kind, row) = match entry.clone() {
        IndexEntry::String {
            param,
            normalized,
            exact,
        } => (
            param,
            IndexKind::String,
            Row {
                text_norm: Some(normalized),
                text_exact: Some(exact),
                ..Row::default()
            },
        ),
        IndexEntry::Token {
            param,
            system,
            code,
            text,
        } => (
            param,
            IndexKind::Token,
            Row {
                text_norm: text,
                system,
                code,
                ..Row::default()
            },
        ),
        IndexEntry::Date { param, low, high } => (
            param,
            IndexKind::Date,
            Row {
                low: Some(low),
                high: Some(high),
                ..Row::default()
            },
        ),
        IndexEntry::Number { param, value } => (
            param,
            IndexKind::Number,
            Row {
                number: Some(value),
                ..Row::default()
            },
        ),
        IndexEntry::Quantity {
            param,
            value,
            system,
            code,
        } => (
            param,
            IndexKind::Quantity,
            Row {
                number: Some(value),
                system,
                code,
                ..Row::default()
            },
        ),
        IndexEntry::Uri { param, uri } => (
            param,
            IndexKind::Uri,
            Row {
                text_exact: Some(uri),
                ..Row::default()
            },
        ),
        IndexEntry::Composite {
            param,
            first,
            second,
        } => {
            let mut row = Row::default();
            let first_is_token = matches!(first, CompositeFirst::Token { .. });
            // A pair's token and reference take the token and target
            // columns; when both are tokens, the second takes the target ones.
            let mut set = |in_target: bool, a: Option<String>, b: String| {
                if in_target {
                    (row.target_type, row.target_id) = (a, Some(b));
                } else {
                    (row.system, row.code) = (a, Some(b));
                }
            };
            match first {
                CompositeFirst::Token { system, code } => set(false, system, code),
                CompositeFirst::Reference {
                    target_type,
                    target_id,
                } => set(true, target_type, target_id),
            }
            match second {
                CompositeSecond::Token { system, code } => set(first_is_token, system, code),
                CompositeSecond::Quantity {
                    value,
                    system,
                    code,
                } => {
                    row.number = Some(value);
                    row.text_norm = system;
                    row.text_exact = code;
                }
                CompositeSecond::Date { low, high } => {
                    row.low = Some(low);
                    row.high = Some(high);
                }
                CompositeSecond::String { normalized, exact } => {
                    row.text_norm = Some(normalized);
                    row.text_exact = Some(exact);
                }
            }
            (param, IndexKind::Composite, row)
        }
        IndexEntry::Reference {
            param,
            target_type,
            target_id,
            url,
        } => (
            param,
            IndexKind::Reference,
            Row {
                text_exact: Some(url),
                target_type,
                target_id,
                ..Row::default()
            },
        ),
    };
    let text = |v: Option<String>| v.map_or(Bind::NullText, Bind::Text);
    let int = |v: Option<i64>| v.map_or(Bind::NullInt, Bind::Int);
    vec![
        Bind::Text(param),
        Bind::Int(kind.code()),
        text(row.text_norm),
        text(row.text_exact),
        text(row.system),
        text(row.code),
        int(row.low),
        int(row.high),
        row.number.map_or(Bind::NullFloat, Bind::Float),
        text(row.target_type),
        text(row.target_id),
    ]
}

pub(crate) fn search(q: &SearchQuery) -> Result<SearchPlan, StoreError> {
    if q.ids.as_ref().is_some_and(|ids| ids.is_empty()) {
        return Err(StoreError::Config("empty _id list".into()));
    }
    let backwards = match &q.cursor {
        Some(c) => {
            let issued_for = if q.sort_by.is_empty() {
                c.sort == sort_code(q.sort) && c.descending == q.descending
            } else {
                c.sort == 'g' && c.order == order_text(q) && c.values.len() == q.sort_by.len()
            };
            if !issued_for {
                return Err(StoreError::InvalidCursor);
            }
            c.direction == 'p'
        }
        None => false,
    };
    if !q.sort_by.is_empty() {
        return Ok(sorted(q, backwards, Bind::Int(i64::from(q.count) + 1)));
    }
    let ascending = q.descending == backwards;
    let (op, dir) = if ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    let limit = Bind::Int(i64::from(q.count) + 1);
    let by_rows = rows_decide(q);

    if by_rows && q.sort == SortKey::Created {
        return Ok(by_keys(q, op, dir, limit, backwards));
    }
    let mut select = Sql::new(&format!("SELECT {COLUMNS}, res_key FROM resource"));
    if by_rows {
        // The page's rows are read anyway; `deleted` is checked again there.
        select.push(" WHERE res_key IN (");
        push_matches(&mut select, q);
        select.push(") AND deleted = FALSE");
    } else {
        push_filters(&mut select, q);
    }
    if let Some(c) = &q.cursor {
        match q.sort {
            SortKey::Created => {
                select
                    .push(" AND res_key ")
                    .push(op)
                    .push(" ")
                    .bind(Bind::Int(c.number));
            }
            SortKey::Id => {
                select.push(" AND (id, resource_type) ").push(op).push(" (");
                select.bind(Bind::Text(c.id.clone())).push(", ");
                select.bind(Bind::Text(c.resource_type.clone())).push(")");
            }
            SortKey::LastUpdated => {
                select
                    .push(" AND (last_updated, resource_type, id) ")
                    .push(op)
                    .push(" (");
                select.bind(Bind::Int(c.number)).push(", ");
                select.bind(Bind::Text(c.resource_type.clone())).push(", ");
                select.bind(Bind::Text(c.id.clone())).push(")");
            }
        }
    }
    match q.sort {
        SortKey::Created => select.push(&format!(" ORDER BY res_key {dir}")),
        SortKey::Id => select.push(&format!(" ORDER BY id {dir}, resource_type {dir}")),
        SortKey::LastUpdated => select.push(&format!(
            " ORDER BY last_updated {dir}, resource_type {dir}, id {dir}"
        )),
    };
    select.push(" LIMIT ").bind(limit);

    Ok(SearchPlan {
        select,
        total: counted_total(q),
        backwards,
        sort_values: Vec::new(),
    })
}

/// A total from the `count` statement, unless none was asked for.
fn counted_total(q: &SearchQuery) -> Total {
    if q.total == TotalMode::None {
        Total::Skip
    } else {
        Total::Count
    }
}

/// The sort keys of a general sort as text (`name,-date`), which a cursor
/// carries so that it continues only the sort it was issued for.
fn order_text(q: &SearchQuery) -> String {
    q.sort_by
        .iter()
        .map(|f| {
            let name = match &f.by {
                SortBy::Id => "_id",
                SortBy::LastUpdated => "_lastUpdated",
                SortBy::Param { param, .. } => param.as_str(),
            };
            format!("{}{name}", if f.descending { "-" } else { "" })
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How a sort key's value reads back from a row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SortValue {
    Text,
    Int,
    Float,
}

/// The SQL of a sort key's value for the row `resource`, and its kind. A
/// parameter's value is the lowest of its rows ascending and the highest
/// descending; for a date, the earliest start or the latest end.
fn push_sort_value(sql: &mut Sql, field: &SortField, joined: Option<usize>) -> SortValue {
    let (param, kind) = match &field.by {
        SortBy::Id => {
            sql.push("resource.id");
            return SortValue::Text;
        }
        SortBy::LastUpdated => {
            sql.push("resource.last_updated");
            return SortValue::Int;
        }
        SortBy::Param { param, kind } => (param, *kind),
    };
    let (column, value) = sort_column(kind, field.descending);
    if let Some(i) = joined {
        sql.push(&format!("k{i}.v"));
        return value;
    }
    let aggregate = if field.descending { "MAX" } else { "MIN" };
    sql.push(&format!(
        "(SELECT {aggregate}({column}) FROM search_index AS si WHERE si.res_key = resource.res_key AND si.kind = {} AND si.param = ",
        kind.code()
    ))
    .bind(Bind::Text(param.clone()))
    .push(")");
    value
}

/// ` LEFT JOIN` of key `i`'s values, every resource's at once: one pass
/// over the parameter's index rows, grouped by resource. Used when no
/// filter narrows the search, where looking each match's value up alone
/// would cost an index search per resource of the type.
fn push_sort_join(sql: &mut Sql, q: &SearchQuery, field: &SortField, i: usize) {
    let SortBy::Param { param, kind } = &field.by else {
        return;
    };
    let (column, _) = sort_column(*kind, field.descending);
    let aggregate = if field.descending { "MAX" } else { "MIN" };
    sql.push(&format!(
        " LEFT JOIN (SELECT res_key AS sk, {aggregate}({column}) AS v FROM search_index WHERE kind = {} AND param = ",
        kind.code()
    ))
    .bind(Bind::Text(param.clone()));
    if let Some(rt) = &q.resource_type {
        sql.push(" AND resource_type = ")
            .bind(Bind::Text(rt.clone()));
    }
    sql.push(&format!(
        " GROUP BY res_key) AS k{i} ON k{i}.sk = resource.res_key"
    ));
}

/// The index column a key of `kind` sorts by, and how its value reads back.
fn sort_column(kind: IndexKind, descending: bool) -> (&'static str, SortValue) {
    match (kind, descending) {
        (IndexKind::String, _) => ("text_norm", SortValue::Text),
        (IndexKind::Token, _) => ("code", SortValue::Text),
        (IndexKind::Date, false) => ("low", SortValue::Int),
        (IndexKind::Date, true) => ("high", SortValue::Int),
        (IndexKind::Number | IndexKind::Quantity, _) => ("number", SortValue::Float),
        (IndexKind::Uri | IndexKind::Reference | IndexKind::Composite, _) => {
            ("text_exact", SortValue::Text)
        }
    }
}

/// A search under `sort_by` (R4 §3.1.1.5.1). Every match's sort values are
/// computed once (a materialized table of key and values), the page is the
/// first of them past the cursor in the order of the keys, a resource
/// without a value after those with one in either direction, ties broken by
/// storage key; only the page's resource rows are read. Paging compares
/// the whole tuple with the cursor's, so it stays correct under any keys.
fn sorted(q: &SearchQuery, backwards: bool, limit: Bind) -> SearchPlan {
    let keys = &q.sort_by;
    // With nothing to narrow the search, every resource of the type is a
    // match: its values come from one grouped pass per key.
    let broad = q.filters.is_empty() && q.ids.is_none();
    let mut select = Sql::new("WITH v AS MATERIALIZED (SELECT resource.res_key AS page_key");
    let mut kinds = Vec::with_capacity(keys.len());
    for (i, field) in keys.iter().enumerate() {
        select.push(", ");
        kinds.push(push_sort_value(&mut select, field, broad.then_some(i)));
        select.push(&format!(" AS s{i}"));
    }
    select.push(" FROM resource");
    if broad {
        for (i, field) in keys.iter().enumerate() {
            push_sort_join(&mut select, q, field, i);
        }
    }
    if rows_decide(q) {
        select.push(" WHERE res_key IN (");
        push_matches(&mut select, q);
        select.push(") AND deleted = FALSE");
    } else {
        push_filters(&mut select, q);
    }
    select.push(")");
    let values: String = (0..keys.len()).map(|i| format!(", p.s{i}")).collect();
    select.push(&format!(
        " SELECT {COLUMNS}, res_key{values} FROM (SELECT * FROM v"
    ));
    if let Some(c) = &q.cursor {
        push_after(&mut select, keys, &kinds, c, backwards);
    }
    // Each key in its direction with the missing last; backwards, all flipped.
    let dir = |descending: bool| {
        if descending != backwards {
            "DESC"
        } else {
            "ASC"
        }
    };
    let nulls = if backwards { "FIRST" } else { "LAST" };
    let order = |prefix: &str| -> String {
        let mut parts: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{prefix}s{i} {} NULLS {nulls}", dir(f.descending)))
            .collect();
        parts.push(format!("{prefix}page_key {}", dir(false)));
        parts.join(", ")
    };
    select
        .push(&format!(" ORDER BY {} LIMIT ", order("")))
        .bind(limit)
        .push(&format!(
            ") AS p JOIN resource ON resource.res_key = p.page_key WHERE deleted = FALSE ORDER BY {}",
            order("p.")
        ));
    SearchPlan {
        select,
        total: counted_total(q),
        backwards,
        sort_values: kinds,
    }
}

/// ` WHERE` the row comes after (before, `backwards`) the cursor's in the
/// order of `sorted`: one disjunct per column of the order (each key's
/// missing-or-not, its value, then the storage key), each equal to the
/// cursor's on the columns before it and past it on its own.
fn push_after(sql: &mut Sql, keys: &[SortField], kinds: &[SortValue], c: &Cursor, backwards: bool) {
    let bind = |kind: SortValue, v: &serde_json::Value| match kind {
        SortValue::Text => Bind::Text(v.as_str().unwrap_or_default().to_owned()),
        SortValue::Int => Bind::Int(v.as_i64().unwrap_or_default()),
        SortValue::Float => Bind::Float(v.as_f64().unwrap_or_default()),
    };
    // (equal, past) conditions per column, as SQL with their binds.
    enum Col<'a> {
        /// Whether key i is missing; the cursor's row has it or not.
        Missing(usize, bool),
        /// Key i's value, which the cursor's row has.
        Value(usize, &'a serde_json::Value),
        Key,
    }
    let mut columns = Vec::new();
    for (i, v) in c.values.iter().enumerate() {
        columns.push(Col::Missing(i, v.is_null()));
        if !v.is_null() {
            columns.push(Col::Value(i, v));
        }
    }
    columns.push(Col::Key);
    sql.push(" WHERE FALSE");
    for (j, column) in columns.iter().enumerate() {
        // The strict condition of column j; none when nothing can be past it.
        let past_missing = |i: usize, missing: bool| -> Option<String> {
            // Missing sorts last: past a row with a value forwards is a row
            // without; backwards, past a row without is a row with one.
            match (missing, backwards) {
                (false, false) => Some(format!("s{i} IS NULL")),
                (true, true) => Some(format!("s{i} IS NOT NULL")),
                _ => None,
            }
        };
        let strict: Option<(String, Option<Bind>)> = match column {
            Col::Missing(i, missing) => past_missing(*i, *missing).map(|c| (c, None)),
            Col::Value(i, v) => {
                let op = if keys[*i].descending != backwards {
                    "<"
                } else {
                    ">"
                };
                Some((format!("s{i} {op} "), Some(bind(kinds[*i], v))))
            }
            Col::Key => Some((
                format!("page_key {} ", if backwards { "<" } else { ">" }),
                Some(Bind::Int(c.number)),
            )),
        };
        let Some((strict, strict_bind)) = strict else {
            continue;
        };
        sql.push(" OR (TRUE");
        for earlier in &columns[..j] {
            match earlier {
                Col::Missing(i, true) => {
                    sql.push(&format!(" AND s{i} IS NULL"));
                }
                Col::Missing(i, false) => {
                    sql.push(&format!(" AND s{i} IS NOT NULL"));
                }
                Col::Value(i, v) => {
                    sql.push(&format!(" AND s{i} = ")).bind(bind(kinds[*i], v));
                }
                Col::Key => {}
            }
        }
        sql.push(" AND ").push(&strict);
        if let Some(b) = strict_bind {
            sql.bind(b);
        }
        sql.push(")");
    }
}

/// `SELECT COUNT(*)` of the matches of `q`: every one, or with
/// [`TotalMode::Bounded`] at most one more than [`BOUNDED_TOTAL`], which
/// tells the caller there are too many to count.
pub(crate) fn count(q: &SearchQuery) -> Sql {
    let mut count = if rows_decide(q) {
        let mut count = Sql::new("SELECT COUNT(*) FROM (");
        push_matches(&mut count, q);
        count
    } else {
        let mut count = Sql::new("SELECT COUNT(*) FROM (SELECT 1 FROM resource");
        push_filters(&mut count, q);
        count
    };
    if q.total == TotalMode::Bounded {
        count.push(" LIMIT ").bind(Bind::Int(BOUNDED_TOTAL + 1));
    }
    count.push(") AS m");
    count
}

/// The total a count statement's result gives: none when a bounded count
/// found more than it may count.
pub(crate) fn counted(mode: TotalMode, n: i64) -> Option<i64> {
    match mode {
        TotalMode::Bounded if n > BOUNDED_TOTAL => None,
        _ => Some(n),
    }
}

/// A search decided by index rows, in creation order: the page is the
/// first keys of the matches past the cursor, and only the page's resource
/// rows are read. A page after a cursor that wants a total counts the
/// matches in the same pass (`COUNT(*) OVER ()`, taken before the cursor
/// narrows them), so the search runs once rather than once for the page
/// and once for the count. A first page does without the window: most
/// selective searches fit on it and are then their own count, and the
/// window costs a plain one-match search about half again its time (a
/// temporary table for the partition); a first page that fills up is
/// counted by the `count` statement.
fn by_keys(q: &SearchQuery, op: &str, dir: &str, limit: Bind, backwards: bool) -> SearchPlan {
    let window = q.total == TotalMode::Accurate && q.cursor.is_some();
    let total = if window { ", total" } else { "" };
    let mut select = Sql::new(&format!(
        "SELECT {COLUMNS}, res_key{total} FROM (SELECT page_key{total} FROM (SELECT res_key AS page_key"
    ));
    if window {
        select.push(", COUNT(*) OVER () AS total");
    }
    select.push(" FROM (");
    push_matches(&mut select, q);
    select.push(") AS m) AS w");
    if let Some(c) = &q.cursor {
        select
            .push(" WHERE page_key ")
            .push(op)
            .push(" ")
            .bind(Bind::Int(c.number));
    }
    select
        .push(&format!(" ORDER BY page_key {dir} LIMIT "))
        .bind(limit)
        .push(&format!(
            ") AS p JOIN resource ON resource.res_key = p.page_key WHERE deleted = FALSE ORDER BY res_key {dir}"
        ));
    SearchPlan {
        select,
        total: match (q.total, window) {
            (TotalMode::None, _) => Total::Skip,
            (_, true) => Total::InPage,
            (_, false) => Total::Count,
        },
        backwards,
        sort_values: Vec::new(),
    }
}

/// A row a search fetched: the resource, its storage key and, under a
/// `sort_by`, its value of each sort key.
pub(crate) type Hit = (StoredResource, i64, Vec<serde_json::Value>);

/// Builds the cursor that continues after (`'n'`) or before (`'p'`) `row`,
/// whose storage key is `key`.
pub(crate) fn search_cursor(q: &SearchQuery, direction: char, (row, key, values): &Hit) -> Cursor {
    let general = !q.sort_by.is_empty();
    Cursor {
        direction,
        sort: if general { 'g' } else { sort_code(q.sort) },
        descending: q.descending,
        number: match q.sort {
            _ if general => *key,
            SortKey::Created => *key,
            SortKey::Id | SortKey::LastUpdated => row.last_updated,
        },
        resource_type: row.resource_type.clone(),
        id: row.id.clone(),
        order: if general {
            order_text(q)
        } else {
            String::new()
        },
        values: values.clone(),
    }
}

/// Turns fetched rows (count + 1 at most) into a page with its links.
pub(crate) fn search_page(
    q: &SearchQuery,
    backwards: bool,
    mut rows: Vec<Hit>,
    total: Option<i64>,
) -> crate::model::SearchPage {
    let more = rows.len() > q.count as usize;
    rows.truncate(q.count as usize);
    if backwards {
        rows.reverse();
    }
    let (next, previous) = if backwards {
        (
            rows.last().map(|r| search_cursor(q, 'n', r)),
            if more {
                rows.first().map(|r| search_cursor(q, 'p', r))
            } else {
                None
            },
        )
    } else {
        (
            if more {
                rows.last().map(|r| search_cursor(q, 'n', r))
            } else {
                None
            },
            if q.cursor.is_some() {
                // An empty page after a cursor still links back to where the client came from.
                rows.first().map(|r| search_cursor(q, 'p', r)).or_else(|| {
                    q.cursor.clone().map(|c| Cursor {
                        direction: 'p',
                        ..c
                    })
                })
            } else {
                None
            },
        )
    };
    crate::model::SearchPage {
        resources: rows.into_iter().map(|(row, _, _)| row).collect(),
        total,
        next,
        previous,
    }
}

fn push_history_filters(sql: &mut Sql, q: &HistoryQuery) {
    sql.push(" WHERE 1 = 1");
    match &q.scope {
        HistoryScope::Instance { resource_type, id } => {
            sql.push(" AND resource_type = ")
                .bind(Bind::Text(resource_type.clone()));
            sql.push(" AND id = ").bind(Bind::Text(id.clone()));
        }
        HistoryScope::Type { resource_type } => {
            sql.push(" AND resource_type = ")
                .bind(Bind::Text(resource_type.clone()));
        }
        HistoryScope::System => {}
    }
    if let Some(since) = q.since {
        sql.push(" AND last_updated >= ").bind(Bind::Int(since));
    }
}

pub(crate) fn history(q: &HistoryQuery) -> Result<(Sql, Sql), StoreError> {
    let mut select = Sql::new(&format!("SELECT seq, {COLUMNS} FROM resource_history"));
    push_history_filters(&mut select, q);
    if let Some(c) = &q.cursor {
        if c.sort != 'h' || c.direction != 'n' {
            return Err(StoreError::InvalidCursor);
        }
        select.push(" AND seq < ").bind(Bind::Int(c.number));
    }
    select
        .push(" ORDER BY seq DESC LIMIT ")
        .bind(Bind::Int(i64::from(q.count) + 1));
    let mut count = Sql::new("SELECT COUNT(*) FROM (SELECT 1 FROM resource_history");
    push_history_filters(&mut count, q);
    count
        .push(" LIMIT ")
        .bind(Bind::Int(BOUNDED_TOTAL + 1))
        .push(") AS m");
    Ok((select, count))
}

pub(crate) fn history_cursor(seq: i64) -> Cursor {
    Cursor {
        direction: 'n',
        sort: 'h',
        descending: true,
        number: seq,
        resource_type: String::new(),
        id: String::new(),
        order: String::new(),
        values: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_sql_numbers_placeholders_in_bind_order() {
        let q = SearchQuery {
            resource_type: Some("Patient".into()),
            ids: Some(vec!["a".into(), "b".into()]),
            last_updated: vec![TimeBound::AtOrAfter(10)],
            count: 5,
            ..Default::default()
        };
        let plan = search(&q).unwrap();
        assert_eq!(
            plan.select.text,
            "SELECT resource_type, id, version_id, last_updated, deleted, body, res_key FROM resource \
             WHERE deleted = FALSE AND resource_type = $1 AND id IN ($2, $3) AND last_updated >= $4 \
             ORDER BY res_key ASC LIMIT $5"
        );
        assert_eq!(plan.select.binds.len(), 5);
        assert_eq!(plan.select.binds[4], Bind::Int(6));
        assert!(plan.total == Total::Skip);
    }

    /// A search over several types lists only their index rows.
    #[test]
    fn index_rows_are_listed_for_the_named_types_only() {
        let q = SearchQuery {
            types: vec!["Observation".into(), "Condition".into()],
            count: 5,
            filters: vec![Filter {
                any_of: vec![Condition::Reference {
                    param: "patient".into(),
                    target_type: Some("Patient".into()),
                    target_id: "p".into(),
                }],
            }],
            ..Default::default()
        };
        let plan = search(&q).unwrap();
        assert!(
            plan.select.text.contains(
                "FROM search_index WHERE kind = 7 AND resource_type IN ($3, $4) AND param = $5"
            ),
            "{}",
            plan.select.text
        );
        assert_eq!(plan.select.binds[2], Bind::Text("Observation".into()));
    }

    #[test]
    fn a_prefix_successor_skips_surrogates_and_carries_past_the_last_code_point() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn cursor_for_another_sort_is_refused() {
        let row = StoredResource {
            resource_type: "Patient".into(),
            id: "a".into(),
            version_id: 1,
            last_updated: 1,
            deleted: false,
            body: String::new(),
        };
        let q = SearchQuery {
            count: 1,
            ..Default::default()
        };
        let cursor = search_cursor(&q, 'n', &(row, 1, Vec::new()));
        let other = SearchQuery {
            sort: SortKey::LastUpdated,
            cursor: Some(cursor),
            count: 1,
            ..Default::default()
        };
        assert!(matches!(search(&other), Err(StoreError::InvalidCursor)));
    }
}
