//! SQL text for search and history, shared by both backends. Placeholders are
//! `$N`, which PostgreSQL and SQLite (through sqlx) both accept.

use crate::cursor::Cursor;
use crate::error::StoreError;
use crate::model::{HistoryQuery, HistoryScope, SearchQuery, SortKey, StoredResource, TimeBound};

/// A value to bind, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
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
}

pub(crate) const COLUMNS: &str = "resource_type, id, version_id, last_updated, deleted, body";

fn sort_code(sort: SortKey) -> char {
    match sort {
        SortKey::Id => 'i',
        SortKey::LastUpdated => 'u',
    }
}

/// Rows are fetched in this order; `reverse` says the page must be flipped afterwards.
pub(crate) struct SearchPlan {
    pub select: Sql,
    pub count: Option<Sql>,
    pub backwards: bool,
}

fn push_filters(sql: &mut Sql, q: &SearchQuery) {
    sql.push(" WHERE deleted = FALSE");
    if let Some(rt) = &q.resource_type {
        sql.push(" AND resource_type = ")
            .bind(Bind::Text(rt.clone()));
    }
    if let Some(ids) = &q.ids {
        sql.push(" AND id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(Bind::Text(id.clone()));
        }
        sql.push(")");
    }
    for bound in &q.last_updated {
        match bound {
            TimeBound::AtOrAfter(t) => sql.push(" AND last_updated >= ").bind(Bind::Int(*t)),
            TimeBound::Before(t) => sql.push(" AND last_updated < ").bind(Bind::Int(*t)),
        };
    }
}

pub(crate) fn search(q: &SearchQuery) -> Result<SearchPlan, StoreError> {
    if q.ids.as_ref().is_some_and(|ids| ids.is_empty()) {
        return Err(StoreError::Config("empty _id list".into()));
    }
    let backwards = match &q.cursor {
        Some(c) => {
            if c.sort != sort_code(q.sort) || c.descending != q.descending {
                return Err(StoreError::InvalidCursor);
            }
            c.direction == 'p'
        }
        None => false,
    };
    let ascending = q.descending == backwards;
    let (op, dir) = if ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };

    let mut select = Sql::new(&format!("SELECT {COLUMNS} FROM resource"));
    push_filters(&mut select, q);
    if let Some(c) = &q.cursor {
        match q.sort {
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
        SortKey::Id => select.push(&format!(" ORDER BY id {dir}, resource_type {dir}")),
        SortKey::LastUpdated => select.push(&format!(
            " ORDER BY last_updated {dir}, resource_type {dir}, id {dir}"
        )),
    };
    select
        .push(" LIMIT ")
        .bind(Bind::Int(i64::from(q.count) + 1));

    let count = q.with_total.then(|| {
        let mut count = Sql::new("SELECT COUNT(*) FROM resource");
        push_filters(&mut count, q);
        count
    });
    Ok(SearchPlan {
        select,
        count,
        backwards,
    })
}

/// Builds the cursor that continues after (`'n'`) or before (`'p'`) `row`.
pub(crate) fn search_cursor(q: &SearchQuery, direction: char, row: &StoredResource) -> Cursor {
    Cursor {
        direction,
        sort: sort_code(q.sort),
        descending: q.descending,
        number: row.last_updated,
        resource_type: row.resource_type.clone(),
        id: row.id.clone(),
    }
}

/// Turns fetched rows (count + 1 at most) into a page with its links.
pub(crate) fn search_page(
    q: &SearchQuery,
    backwards: bool,
    mut rows: Vec<StoredResource>,
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
        resources: rows,
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
    let mut count = Sql::new("SELECT COUNT(*) FROM resource_history");
    push_history_filters(&mut count, q);
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
            "SELECT resource_type, id, version_id, last_updated, deleted, body FROM resource \
             WHERE deleted = FALSE AND resource_type = $1 AND id IN ($2, $3) AND last_updated >= $4 \
             ORDER BY id ASC, resource_type ASC LIMIT $5"
        );
        assert_eq!(plan.select.binds.len(), 5);
        assert_eq!(plan.select.binds[4], Bind::Int(6));
        assert!(plan.count.is_none());
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
        let cursor = search_cursor(&q, 'n', &row);
        let other = SearchQuery {
            sort: SortKey::LastUpdated,
            cursor: Some(cursor),
            count: 1,
            ..Default::default()
        };
        assert!(matches!(search(&other), Err(StoreError::InvalidCursor)));
    }
}
