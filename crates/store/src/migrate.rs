//! Embedded schema migrations, one list per backend, applied at start.
//! Each entry is applied once, in order, inside a transaction.

/// (version, statements) for SQLite.
pub(crate) const SQLITE: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE resource (
            resource_type TEXT NOT NULL,
            id TEXT NOT NULL,
            version_id INTEGER NOT NULL,
            last_updated INTEGER NOT NULL,
            deleted BOOLEAN NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (resource_type, id)
        )",
            "CREATE INDEX resource_by_updated ON resource (resource_type, last_updated, id)",
            "CREATE INDEX resource_by_id ON resource (id, resource_type)",
            "CREATE TABLE resource_history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            resource_type TEXT NOT NULL,
            id TEXT NOT NULL,
            version_id INTEGER NOT NULL,
            last_updated INTEGER NOT NULL,
            deleted BOOLEAN NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (resource_type, id, version_id)
        )",
            "CREATE INDEX resource_history_by_type ON resource_history (resource_type, seq)",
        ],
    ),
    (
        2,
        // Live rows of a type in id order: covers the search page and its count
        // without reading resource bodies.
        &["CREATE INDEX resource_live_by_id ON resource (resource_type, deleted, id)"],
    ),
];

/// (version, statements) for PostgreSQL.
pub(crate) const POSTGRES: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE resource (
            resource_type TEXT NOT NULL,
            id TEXT NOT NULL,
            version_id BIGINT NOT NULL,
            last_updated BIGINT NOT NULL,
            deleted BOOLEAN NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (resource_type, id)
        )",
            "CREATE INDEX resource_by_updated ON resource (resource_type, last_updated, id)",
            "CREATE INDEX resource_by_id ON resource (id, resource_type)",
            "CREATE TABLE resource_history (
            seq BIGSERIAL PRIMARY KEY,
            resource_type TEXT NOT NULL,
            id TEXT NOT NULL,
            version_id BIGINT NOT NULL,
            last_updated BIGINT NOT NULL,
            deleted BOOLEAN NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (resource_type, id, version_id)
        )",
            "CREATE INDEX resource_history_by_type ON resource_history (resource_type, seq)",
        ],
    ),
    (
        2,
        // Live rows of a type in id order: covers the search page and its count
        // without reading resource bodies.
        &["CREATE INDEX resource_live_by_id ON resource (resource_type, deleted, id)"],
    ),
];

/// Bookkeeping table, the same on both backends.
pub(crate) const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS fhirbox_schema (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";
