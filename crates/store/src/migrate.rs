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
        // Search (docs/search.md): an integer key per resource row, and the
        // index rows of every kind of value in one table (so a write adds
        // them in one statement), each kind with its own partial index.
        // Rows for data stored before are built by the server at start.
        &[
            "ALTER TABLE resource ADD COLUMN res_key INTEGER",
            "UPDATE resource SET res_key = rowid",
            "CREATE UNIQUE INDEX resource_by_key ON resource (res_key)",
            "CREATE TABLE search_index (res_key INTEGER NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, kind SMALLINT NOT NULL, text_norm TEXT, text_exact TEXT, system TEXT, code TEXT, low INTEGER, high INTEGER, number REAL, target_type TEXT, target_id TEXT)",
            "CREATE TABLE fhirbox_setting (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    ),
    (4, SEARCH_INDEXES),
    (5, COVERING_SEARCH_INDEXES),
    // PostgreSQL's text columns move to code-point order; SQLite's BINARY
    // collation is that already.
    (6, &[]),
    (7, PROBE_INDEX),
    (8, LIVE_BY_KEY),
    (9, SQLITE_HISTORY_TRIGGERS),
    (10, SQLITE_KEY_AS_ROWID),
    (11, AUTH_GRANTS),
    (
        12,
        &[
            "CREATE TABLE subscription_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, destination_version INTEGER NOT NULL, topic TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, version_id INTEGER NOT NULL, interaction TEXT NOT NULL, created_at INTEGER NOT NULL)",
            OUTBOX_INDEX,
        ],
    ),
];

/// The subscriptions' outbox (docs/subscriptions.md) is read per
/// destination, oldest first. `destination_version` is the version of the
/// destination a notification was queued for, so a destination deleted and
/// created again never receives what was queued before.
const OUTBOX_INDEX: &str =
    "CREATE INDEX subscription_outbox_by_destination ON subscription_outbox (destination, seq)";

/// The grants of sign-in (authorization codes, refresh tokens), by the
/// digest of their value, the same on both backends: `kind` says what a
/// row is and whether it was used (`code`, `code-used`, …), `family` ties a
/// refresh token to the code and the tokens it came from.
const AUTH_GRANTS: &[&str] = &[
    "CREATE TABLE auth_grant (digest TEXT PRIMARY KEY, kind TEXT NOT NULL, family TEXT NOT NULL, body TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE INDEX auth_grant_by_expiry ON auth_grant (expires_at)",
    "CREATE INDEX auth_grant_by_family ON auth_grant (family)",
];

/// The indexes of `search_index`, the same on both backends: one for
/// deleting a resource's rows, and one partial index per kind of value
/// (a search names its kind, so it reads only that kind's index).
const SEARCH_INDEXES: &[&str] = &[
    "CREATE INDEX search_index_key ON search_index (res_key)",
    "CREATE INDEX search_index_string ON search_index (resource_type, param, text_norm) WHERE kind = 1",
    "CREATE INDEX search_index_token ON search_index (resource_type, param, code, system) WHERE kind = 2",
    "CREATE INDEX search_index_date ON search_index (resource_type, param, low, high) WHERE kind = 3",
    "CREATE INDEX search_index_number ON search_index (resource_type, param, number) WHERE kind = 4",
    "CREATE INDEX search_index_quantity ON search_index (resource_type, param, number) WHERE kind = 5",
    "CREATE INDEX search_index_uri ON search_index (resource_type, param, text_exact) WHERE kind = 6",
    "CREATE INDEX search_index_reference ON search_index (resource_type, param, target_id, target_type) WHERE kind = 7",
    "CREATE INDEX search_index_composite ON search_index (resource_type, param, code, system) WHERE kind = 8",
];

/// The per-kind indexes again, each entry also holding the row's `res_key`
/// (and `kind`, which SQLite wants present to read a partial index alone):
/// a search's subquery then answers from the index without visiting the
/// table rows (a patient's observations of one code: 4 times faster).
const COVERING_SEARCH_INDEXES: &[&str] = &[
    "DROP INDEX search_index_string",
    "DROP INDEX search_index_token",
    "DROP INDEX search_index_date",
    "DROP INDEX search_index_number",
    "DROP INDEX search_index_quantity",
    "DROP INDEX search_index_uri",
    "DROP INDEX search_index_reference",
    "DROP INDEX search_index_composite",
    "CREATE INDEX search_index_string ON search_index (resource_type, param, text_norm, res_key, kind) WHERE kind = 1",
    "CREATE INDEX search_index_token ON search_index (resource_type, param, code, system, res_key, kind) WHERE kind = 2",
    "CREATE INDEX search_index_date ON search_index (resource_type, param, low, high, res_key, kind) WHERE kind = 3",
    "CREATE INDEX search_index_number ON search_index (resource_type, param, number, res_key, kind) WHERE kind = 4",
    "CREATE INDEX search_index_quantity ON search_index (resource_type, param, number, res_key, kind) WHERE kind = 5",
    "CREATE INDEX search_index_uri ON search_index (resource_type, param, text_exact, res_key, kind) WHERE kind = 6",
    "CREATE INDEX search_index_reference ON search_index (resource_type, param, target_id, target_type, res_key, kind) WHERE kind = 7",
    "CREATE INDEX search_index_composite ON search_index (resource_type, param, code, system, res_key, kind) WHERE kind = 8",
];

/// The index by resource key, widened so that checking one candidate's
/// date or number range (a broad filter beside a narrow one,
/// `query::Lookup::Probe`) reads the index alone: a Synthea observation has
/// about a dozen index rows, and the plain key index fetched every one of
/// them from the table. Deleting a resource's rows still seeks by its key.
const PROBE_INDEX: &[&str] = &[
    "DROP INDEX search_index_key",
    "CREATE INDEX search_index_key ON search_index (res_key, kind, param, low, high, number)",
    // The planner's statistics of the table (PostgreSQL dropped those of the
    // columns migration 6 changed; the new index has none yet).
    "ANALYZE search_index",
];

/// Live rows of a type in creation order, the default order of a search
/// (`SortKey::Created`): covers the page and its count without reading
/// resource bodies, as the id order it replaces did (a search sorted by
/// `_id` walks the primary key).
const LIVE_BY_KEY: &[&str] = &[
    "CREATE INDEX resource_live_by_key ON resource (resource_type, deleted, res_key)",
    "DROP INDEX resource_live_by_id",
];

/// Every version a resource row takes is copied into `resource_history` by
/// the database itself, in the statement that writes the row: a write then
/// costs one statement less (one round trip to the database), and no write
/// path can forget the history. Deleted versions are copied too, with the
/// empty body the row then holds.
const SQLITE_HISTORY_TRIGGERS: &[&str] = &[
    "CREATE TRIGGER resource_history_on_insert AFTER INSERT ON resource BEGIN \
     INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, body) \
     VALUES (NEW.resource_type, NEW.id, NEW.version_id, NEW.last_updated, NEW.deleted, NEW.body); END",
    "CREATE TRIGGER resource_history_on_update AFTER UPDATE ON resource BEGIN \
     INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, body) \
     VALUES (NEW.resource_type, NEW.id, NEW.version_id, NEW.last_updated, NEW.deleted, NEW.body); END",
];

/// `res_key` becomes the resource table's own key (`INTEGER PRIMARY KEY`,
/// SQLite's rowid): a search reads its page's rows by key straight from the
/// table rather than through an index of keys, and a write has one index
/// fewer to update (https://www.sqlite.org/lang_createtable.html#rowid).
/// SQLite cannot change a table's key in place, so the table is copied once.
const SQLITE_KEY_AS_ROWID: &[&str] = &[
    "CREATE TABLE resource_keyed (
        res_key INTEGER PRIMARY KEY,
        resource_type TEXT NOT NULL,
        id TEXT NOT NULL,
        version_id INTEGER NOT NULL,
        last_updated INTEGER NOT NULL,
        deleted BOOLEAN NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (resource_type, id)
    )",
    "INSERT INTO resource_keyed (res_key, resource_type, id, version_id, last_updated, deleted, body) \
     SELECT res_key, resource_type, id, version_id, last_updated, deleted, body FROM resource",
    // Also drops the table's indexes and its history triggers.
    "DROP TABLE resource",
    "ALTER TABLE resource_keyed RENAME TO resource",
    "CREATE INDEX resource_by_updated ON resource (resource_type, last_updated, id)",
    "CREATE INDEX resource_by_id ON resource (id, resource_type)",
    "CREATE INDEX resource_live_by_key ON resource (resource_type, deleted, res_key)",
    SQLITE_HISTORY_TRIGGERS[0],
    SQLITE_HISTORY_TRIGGERS[1],
    // Dropping the table dropped its planner statistics.
    "ANALYZE resource",
];

/// The same copy on PostgreSQL, as a row trigger
/// (https://www.postgresql.org/docs/current/plpgsql-trigger.html).
const POSTGRES_HISTORY_TRIGGER: &[&str] = &[
    "CREATE FUNCTION resource_history_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
     INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, body) \
     VALUES (NEW.resource_type, NEW.id, NEW.version_id, NEW.last_updated, NEW.deleted, NEW.body); \
     RETURN NULL; END $$",
    "CREATE TRIGGER resource_history_copy AFTER INSERT OR UPDATE ON resource \
     FOR EACH ROW EXECUTE FUNCTION resource_history_copy()",
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
            "CREATE TABLE search_index (res_key BIGINT NOT NULL, resource_type TEXT NOT NULL, param TEXT NOT NULL, kind SMALLINT NOT NULL, text_norm TEXT, text_exact TEXT, system TEXT, code TEXT, low BIGINT, high BIGINT, number DOUBLE PRECISION, target_type TEXT, target_id TEXT)",
            "CREATE TABLE fhirbox_setting (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ],
    ),
    (4, SEARCH_INDEXES),
    (5, COVERING_SEARCH_INDEXES),
    (
        6,
        // Index values compare by code point, as in SQLite: a prefix search
        // is then an index range (`query::push_prefix`), whatever the
        // database's default collation, and comparisons skip the locale.
        &[r#"ALTER TABLE search_index
            ALTER COLUMN resource_type TYPE TEXT COLLATE "C",
            ALTER COLUMN param TYPE TEXT COLLATE "C",
            ALTER COLUMN text_norm TYPE TEXT COLLATE "C",
            ALTER COLUMN text_exact TYPE TEXT COLLATE "C",
            ALTER COLUMN system TYPE TEXT COLLATE "C",
            ALTER COLUMN code TYPE TEXT COLLATE "C",
            ALTER COLUMN target_type TYPE TEXT COLLATE "C",
            ALTER COLUMN target_id TYPE TEXT COLLATE "C""#],
    ),
    (7, PROBE_INDEX),
    (8, LIVE_BY_KEY),
    (9, POSTGRES_HISTORY_TRIGGER),
    (10, AUTH_GRANTS),
    (
        11,
        &[
            "CREATE TABLE subscription_outbox (seq BIGSERIAL PRIMARY KEY, destination TEXT NOT NULL, destination_version BIGINT NOT NULL, topic TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL, version_id BIGINT NOT NULL, interaction TEXT NOT NULL, created_at BIGINT NOT NULL)",
            OUTBOX_INDEX,
        ],
    ),
];

/// Bookkeeping table, the same on both backends.
pub(crate) const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS fhirbox_schema (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";
