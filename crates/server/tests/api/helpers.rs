//! The test harness: `TestApp` starts the real server on port 0 with a fresh
//! database (a temporary SQLite file, or a new PostgreSQL database on the
//! server named by `FHIRBOX_TEST_POSTGRES_URL`) and offers typed request helpers.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use fhirbox_server::settings::{DatabaseUrl, RootClient, Settings};
use reqwest::header::HeaderMap;
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use fhirbox_test_support::postgres::TestDatabase;
pub use fhirbox_test_support::Backend;

/// Runs each listed `async fn name(app: TestApp)` of the calling module once
/// per backend, as `name::sqlite` and `name::postgres`, each on a fresh
/// database. The PostgreSQL variant shows as ignored unless
/// `FHIRBOX_TEST_POSTGRES_URL` is set, and fails under CI when it is not.
/// `backend_tests!(per_backend: name, ..)` passes the `Backend` instead, for
/// tests that start their servers themselves.
#[macro_export]
macro_rules! backend_tests {
    (per_backend: $($name:ident),* $(,)?) => {
        fhirbox_test_support::backend_variants!($($name),*);
    };
    ($($name:ident),* $(,)?) => {
        fhirbox_test_support::backend_variants!(setup = $crate::helpers::TestApp::spawn; $($name),*);
    };
}

/// A database that exists for one test and is removed afterwards.
pub enum TestDb {
    Sqlite {
        dir: PathBuf,
    },
    Postgres(TestDatabase),
    /// Another server's database, borrowed (never dropped by this one).
    Shared {
        url: String,
        sqlite: Option<PathBuf>,
        postgres_name: Option<String>,
    },
}

impl TestDb {
    pub async fn create(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let unique = uuid::Uuid::new_v4().simple().to_string();
                let dir = std::env::temp_dir().join(format!("fhirbox-test-{unique}"));
                std::fs::create_dir_all(&dir).unwrap();
                TestDb::Sqlite { dir }
            }
            Backend::Postgres => TestDb::Postgres(TestDatabase::create().await),
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { dir } => format!("sqlite:{}", dir.join("fhirbox.db").display()),
            TestDb::Postgres(db) => db.url(),
            TestDb::Shared { url, .. } => url.clone(),
        }
    }

    /// The SQLite file, for tests that inspect what is on disk.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match self {
            TestDb::Sqlite { dir } => Some(dir.join("fhirbox.db")),
            TestDb::Shared { sqlite, .. } => sqlite.clone(),
            TestDb::Postgres(_) => None,
        }
    }

    /// The PostgreSQL database name, for `pg_dump`.
    pub fn postgres_name(&self) -> Option<String> {
        match self {
            TestDb::Postgres(db) => Some(db.name().to_owned()),
            TestDb::Shared { postgres_name, .. } => postgres_name.clone(),
            TestDb::Sqlite { .. } => None,
        }
    }

    fn share(&self) -> TestDb {
        TestDb::Shared {
            url: self.url(),
            sqlite: self.sqlite_path(),
            postgres_name: self.postgres_name(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A PostgreSQL database drops itself (TestDatabase); a shared one belongs to another server.
        if let TestDb::Sqlite { dir } = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OperationOutcome whose first diagnostics contain `needle`.
    pub fn assert_outcome(&self, status: u16, needle: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text);
        let diagnostics = v["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        assert!(
            diagnostics.contains(needle),
            "diagnostics {diagnostics:?} should mention {needle:?}"
        );
    }
}

/// A running server and a client for it.
pub struct TestApp {
    pub addr: String,
    pub backend: Backend,
    /// Sends root's credentials unless a request sets its own Authorization.
    pub client: reqwest::Client,
    /// Sends no credentials.
    pub anon: reqwest::Client,
    pub db: TestDb,
    pub state: fhirbox_server::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Everything the servers in this test binary logged (one global subscriber).
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
static LOGGING: std::sync::Once = std::sync::Once::new();

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGGING.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                // The Kafka client's own lines are logged at debug.
                "info,fhirbox_secrets=debug,fhirbox_subscriptions=debug,sqlx=warn",
            ))
            .try_init();
    });
}

/// The log output captured so far, from every server in this test binary.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The root client's secret in every test server.
pub const ROOT_SECRET: &str = "root-secret-for-tests-only";

/// Request bodies above this size get 413 in tests.
pub const TEST_MAX_BODY: usize = 256 * 1024;

impl TestApp {
    /// Starts a server on a fresh database. For PostgreSQL this needs
    /// `FHIRBOX_TEST_POSTGRES_URL` and panics, naming it, when it is missing.
    pub async fn spawn(backend: Backend) -> TestApp {
        let db = TestDb::create(backend).await;
        Self::start(backend, db).await
    }

    async fn start(backend: Backend, db: TestDb) -> TestApp {
        Self::start_with(backend, db, |_| {}).await
    }

    /// Starts a server on a fresh database with adjusted settings.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDb::create(backend).await;
        Self::start_with(backend, db, adjust).await
    }

    /// Starts a server on a fresh database, or says why it would not start.
    pub async fn try_spawn_with(
        backend: Backend,
        adjust: impl FnOnce(&mut Settings),
    ) -> Result<TestApp, String> {
        let db = TestDb::create(backend).await;
        Self::try_start_with(backend, db, adjust).await
    }

    async fn start_with(
        backend: Backend,
        db: TestDb,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        Self::try_start_with(backend, db, adjust)
            .await
            .expect("the app builds")
    }

    async fn try_start_with(
        backend: Backend,
        db: TestDb,
        adjust: impl FnOnce(&mut Settings),
    ) -> Result<TestApp, String> {
        capture_logs();
        let mut settings = Settings::for_database(DatabaseUrl::new(db.url()));
        settings.max_body_bytes = TEST_MAX_BODY;
        settings.root_client = Some(RootClient {
            id: "root".into(),
            secret: SecretString::from(ROOT_SECRET),
        });
        adjust(&mut settings);
        let app = fhirbox_server::build_app(settings)
            .await
            .map_err(|e| e.to_string())?;
        let state = app.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            fhirbox_server::serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let mut root_auth = HeaderMap::new();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("root:{ROOT_SECRET}"));
        root_auth.insert("authorization", format!("Basic {encoded}").parse().unwrap());
        Ok(TestApp {
            addr,
            backend,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(root_auth)
                .build()
                .unwrap(),
            anon: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            db,
            state,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    /// Settings for another program on this test's database (a command).
    pub fn settings(&self) -> Settings {
        Settings::for_database(DatabaseUrl::new(self.db.url()))
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// `restart` with adjusted settings.
    pub async fn restart_with(mut self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        self.stop().await;
        let db = std::mem::replace(
            &mut self.db,
            TestDb::Sqlite {
                dir: PathBuf::from("/nonexistent-fhirbox-test"),
            },
        );
        Self::start_with(self.backend, db, adjust).await
    }

    /// A second server on the same database (another instance of a deployment).
    pub async fn sibling(&self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        Self::start_with(self.backend, self.db.share(), adjust).await
    }

    /// Signals the server to stop (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server task ended within `limit` (after `begin_shutdown`).
    pub async fn stopped_within(&mut self, limit: Duration) -> bool {
        match self.server.as_mut() {
            Some(server) => match tokio::time::timeout(limit, server).await {
                Ok(result) => {
                    result.unwrap();
                    self.server = None;
                    true
                }
                Err(_) => false,
            },
            None => true,
        }
    }

    /// `host:port` of the server, for raw TCP clients.
    pub fn socket_addr(&self) -> String {
        self.addr.trim_start_matches("http://").to_owned()
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let res = req.send().await.expect("request is sent");
        Resp {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(self.fhir(self.client.put(self.url(path)), body))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.fhir(self.client.post(self.url(path)), body))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send(
            self.client
                .patch(self.url(path))
                .header("content-type", "application/json-patch+json")
                .body(body.to_string()),
        )
        .await
    }

    /// A request with a FHIR JSON body.
    pub fn fhir(&self, req: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
        req.header("content-type", "application/fhir+json")
            .body(body.to_string())
    }

    /// Stores a Client with a literal secret and the given grants.
    pub async fn put_client(&self, id: &str, secret: &str, grants: &[&str]) -> Resp {
        let r = self
            .put(
                &format!("/fhir/Client/{id}"),
                &serde_json::json!({"resourceType": "Client", "id": id, "secret": secret, "grant_types": grants}),
            )
            .await;
        assert!(
            r.status == 200 || r.status == 201,
            "PUT Client/{id}: {} {}",
            r.status,
            r.text
        );
        r
    }

    /// Stores a Client with a literal secret (Basic grant) and a `matcho`
    /// AccessPolicy `<id>-policy` linked to it.
    pub async fn matcho_client(&self, id: &str, secret: &str, matcho: Value) {
        self.put_client(id, secret, &["basic", "client_credentials"])
            .await;
        let r = self
            .put(
                &format!("/fhir/AccessPolicy/{id}-policy"),
                &serde_json::json!({"resourceType": "AccessPolicy", "id": format!("{id}-policy"),
                    "engine": "matcho", "link": [{"reference": format!("Client/{id}")}], "matcho": matcho}),
            )
            .await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
    }

    /// Sends a request as client `id` with HTTP Basic, with a FHIR JSON body
    /// when one is given.
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        (id, secret): (&str, &str),
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self
            .anon
            .request(method, self.url(path))
            .basic_auth(id, Some(secret));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        self.send(req).await
    }

    /// Stores an `allow` AccessPolicy linked to one client.
    pub async fn allow_client(&self, policy_id: &str, client_id: &str) {
        let r = self
            .put(
                &format!("/fhir/AccessPolicy/{policy_id}"),
                &serde_json::json!({"resourceType": "AccessPolicy", "id": policy_id, "engine": "allow",
                                    "link": [{"reference": format!("Client/{client_id}")}]}),
            )
            .await;
        assert!(
            r.status == 200 || r.status == 201,
            "PUT AccessPolicy/{policy_id}: {} {}",
            r.status,
            r.text
        );
    }

    /// GET with HTTP Basic credentials instead of root's.
    pub async fn get_as(&self, path: &str, id: &str, secret: &str) -> Resp {
        self.send(self.anon.get(self.url(path)).basic_auth(id, Some(secret)))
            .await
    }

    /// Creates a Patient with the given id and family name; returns the stored JSON.
    pub async fn put_patient(&self, id: &str, family: &str) -> Value {
        let r = self
            .put(
                &format!("/fhir/Patient/{id}"),
                &serde_json::json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
            )
            .await;
        assert!(
            r.status == 200 || r.status == 201,
            "PUT Patient/{id}: {} {}",
            r.status,
            r.text
        );
        r.json()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Ids of the resources in a searchset or history bundle, in order.
pub fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The URL of a bundle link, made relative to the server.
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| {
            let url = l["url"].as_str().unwrap();
            let after_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
            after_scheme[after_scheme.find('/').unwrap_or(0)..].to_owned()
        })
}

/// Everything the database holds on disk: the SQLite file and its WAL, or a
/// `pg_dump` of the test database. For scans that prove a value is absent.
pub fn database_bytes(app: &TestApp) -> Vec<u8> {
    match app.backend {
        Backend::Sqlite => {
            let path = app.db.sqlite_path().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
                bytes.extend(wal);
            }
            assert!(bytes.len() > 4096, "the database file holds data");
            bytes
        }
        Backend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .arg("--dbname")
                .arg(app.db.url())
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "pg_dump failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("resource_history"));
            out.stdout
        }
    }
}

/// Secret `values` appear in none of `bodies` (responses the test kept),
/// the captured logs, or the bytes of `app`'s database.
pub fn assert_nowhere(app: &TestApp, values: &[&str], bodies: &[String]) {
    let db = database_bytes(app);
    let logs = captured_logs();
    for value in values {
        for body in bodies {
            assert!(!body.contains(value), "{value} in a response: {body}");
        }
        assert!(!logs.contains(value), "{value} in the logs");
        assert!(
            !db.windows(value.len()).any(|w| w == value.as_bytes()),
            "{value} in the database"
        );
    }
}

/// Waits (up to 5 s) until the vault's only secret, as `/admin/secrets`
/// reports it, is `n` bytes long: a rotation was picked up.
pub async fn served_secret_size_is(app: &TestApp, n: usize) -> bool {
    fhirbox_test_support::wait_until_async(std::time::Duration::from_secs(5), || async {
        app.get("/admin/secrets").await.json()["secrets"][0]["sizeBytes"] == serde_json::json!(n)
    })
    .await
}
