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
    (
        3,
        // Search (docs/search.md): an integer key per resource row, and one
        // table of index rows per kind of value, replaced with every write.
        // Rows for data stored before are built by the server at start.
        &[
            "ALTER TABLE resource ADD COLUMN res_key INTEGER",
            "UPDATE resource SET res_key = rowid",
            "CREATE UNIQUE INDEX resource_by_key ON resource (res_key)",
            "CREATE TABLE idx_string (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, normalized TEXT NOT NULL, exact TEXT NOT NULL)",
            "CREATE INDEX idx_string_norm ON idx_string (resource_type, param, normalized)",
            "CREATE INDEX idx_string_key ON idx_string (res_key)",
            "CREATE TABLE idx_token (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT, text TEXT)",
            "CREATE INDEX idx_token_code ON idx_token (resource_type, param, code, system)",
            "CREATE INDEX idx_token_key ON idx_token (res_key)",
            "CREATE TABLE idx_date (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL)",
            "CREATE INDEX idx_date_low ON idx_date (resource_type, param, low)",
            "CREATE INDEX idx_date_key ON idx_date (res_key)",
            "CREATE TABLE idx_number (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, value REAL NOT NULL)",
            "CREATE INDEX idx_number_value ON idx_number (resource_type, param, value)",
            "CREATE INDEX idx_number_key ON idx_number (res_key)",
            "CREATE TABLE idx_quantity (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, value REAL NOT NULL, system TEXT, code TEXT)",
            "CREATE INDEX idx_quantity_value ON idx_quantity (resource_type, param, value)",
            "CREATE INDEX idx_quantity_key ON idx_quantity (res_key)",
            "CREATE TABLE idx_uri (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, uri TEXT NOT NULL)",
            "CREATE INDEX idx_uri_uri ON idx_uri (resource_type, param, uri)",
            "CREATE INDEX idx_uri_key ON idx_uri (res_key)",
            "CREATE TABLE idx_reference (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, target_type TEXT, target_id TEXT, url TEXT NOT NULL)",
            "CREATE INDEX idx_reference_target ON idx_reference (resource_type, param, target_id, target_type)",
            "CREATE INDEX idx_reference_key ON idx_reference (res_key)",
            "CREATE TABLE fhirbox_setting (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
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
    (
        3,
        // As in SQLite; BIGSERIAL numbers existing rows and new ones.
        &[
            "ALTER TABLE resource ADD COLUMN res_key BIGSERIAL",
            "CREATE UNIQUE INDEX resource_by_key ON resource (res_key)",
            "CREATE TABLE idx_string (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, normalized TEXT NOT NULL, exact TEXT NOT NULL)",
            "CREATE INDEX idx_string_norm ON idx_string (resource_type, param, normalized)",
            "CREATE INDEX idx_string_key ON idx_string (res_key)",
            "CREATE TABLE idx_token (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT, text TEXT)",
            "CREATE INDEX idx_token_code ON idx_token (resource_type, param, code, system)",
            "CREATE INDEX idx_token_key ON idx_token (res_key)",
            "CREATE TABLE idx_date (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, low BIGINT NOT NULL, high BIGINT NOT NULL)",
            "CREATE INDEX idx_date_low ON idx_date (resource_type, param, low)",
            "CREATE INDEX idx_date_key ON idx_date (res_key)",
            "CREATE TABLE idx_number (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, value DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX idx_number_value ON idx_number (resource_type, param, value)",
            "CREATE INDEX idx_number_key ON idx_number (res_key)",
            "CREATE TABLE idx_quantity (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, system TEXT, code TEXT)",
            "CREATE INDEX idx_quantity_value ON idx_quantity (resource_type, param, value)",
            "CREATE INDEX idx_quantity_key ON idx_quantity (res_key)",
            "CREATE TABLE idx_uri (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, uri TEXT NOT NULL)",
            "CREATE INDEX idx_uri_uri ON idx_uri (resource_type, param, uri)",
            "CREATE INDEX idx_uri_key ON idx_uri (res_key)",
            "CREATE TABLE idx_reference (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, target_type TEXT, target_id TEXT, url TEXT NOT NULL)",
            "CREATE INDEX idx_reference_target ON idx_reference (resource_type, param, target_id, target_type)",
            "CREATE INDEX idx_reference_key ON idx_reference (res_key)",
            "CREATE TABLE fhirbox_setting (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    ),
];

/// Bookkeeping table, the same on both backends.
pub(crate) const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS fhirbox_schema (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";
