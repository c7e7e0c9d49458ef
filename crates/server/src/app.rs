//! The one application constructor: `build_app(settings)` opens the store and
//! builds the router. `main` and every test start the server through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, MethodRouter};
use axum::Router;
use fhirbox_rest::capability::{capability_statement, Interactions, Level};
use fhirbox_rest::{Rest, WriteChecks};
use fhirbox_store::Store;
use tokio::net::TcpListener;

use crate::auth::{AuthService, AuthState};
use crate::extract::PublicBase;
use crate::health::HealthState;
use crate::metrics::Metrics;
use crate::settings::{Settings, Validation};
use crate::{auth, fhir_api, health, logging};

/// The application's state. Handlers never take all of it: each takes the
/// part it needs (`Rest`, `AuthState`, `HealthState`, `Arc<Metrics>`, …)
/// through `FromRef`, so no handler module depends on this one.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub settings: Arc<Settings>,
    pub started: Instant,
    /// Rendered once at start from the registered interactions.
    pub capability: Arc<String>,
    pub auth: Arc<AuthService>,
    pub metrics: Arc<Metrics>,
    /// External secrets (docs/external-secrets.md); `None` when `BOX_VAULT_CONFIG` is unset.
    pub vault: Option<fhirbox_secrets::SecretResolver>,
    /// The FHIR interactions over `store`.
    pub rest: Rest,
    public_base: PublicBase,
}

impl FromRef<AppState> for Rest {
    fn from_ref(app: &AppState) -> Rest {
        app.rest.clone()
    }
}

impl FromRef<AppState> for AuthState {
    fn from_ref(app: &AppState) -> AuthState {
        AuthState {
            auth: app.auth.clone(),
            metrics: app.metrics.clone(),
        }
    }
}

impl FromRef<AppState> for auth::signin::SignInState {
    fn from_ref(app: &AppState) -> auth::signin::SignInState {
        auth::signin::SignInState {
            auth: app.auth.clone(),
            store: app.store.clone(),
            metrics: app.metrics.clone(),
            rest: app.rest.clone(),
            cookie_secure: app.settings.cookie_secure,
            base_url: app.settings.base_url.as_deref().map(Arc::from),
        }
    }
}

impl FromRef<AppState> for HealthState {
    fn from_ref(app: &AppState) -> HealthState {
        HealthState {
            store: app.store.clone(),
            started: app.started,
            vault: app.vault.clone(),
        }
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(app: &AppState) -> Arc<Metrics> {
        app.metrics.clone()
    }
}

impl FromRef<AppState> for Option<fhirbox_secrets::SecretResolver> {
    fn from_ref(app: &AppState) -> Option<fhirbox_secrets::SecretResolver> {
        app.vault.clone()
    }
}

impl FromRef<AppState> for PublicBase {
    fn from_ref(app: &AppState) -> PublicBase {
        app.public_base.clone()
    }
}

/// A built application, not yet listening.
pub struct App {
    pub state: AppState,
    pub router: Router,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: fhirbox_store::StoreError,
    },
    #[error("cannot listen on port {port}: {source}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("BOX_VAULT_CONFIG: {0}")]
    Vault(#[from] fhirbox_secrets::ConfigError),
    #[error("{0}")]
    Validation(#[from] fhirbox_validation::SchemaError),
    #[error("BOX_INIT_BUNDLE {path}: {message}")]
    InitBundle { path: String, message: String },
    #[error("BOX_AUTH_ID_TOKEN_KEY_FILE: {0}")]
    IdTokenKey(String),
}

/// Registers routes and the interactions they implement, so the
/// CapabilityStatement is generated from what is really routed.
struct RouteTable {
    router: Router<AppState>,
    interactions: Interactions,
}

impl RouteTable {
    fn route(
        mut self,
        path: &str,
        methods: MethodRouter<AppState>,
        level: Level,
        codes: &[&'static str],
    ) -> Self {
        self.router = self
            .router
            .route(path, methods.fallback(fhir_api::method_not_allowed));
        self.interactions.declare(level, codes);
        self
    }

    /// An operation (`$name`) on every type; the CapabilityStatement lists it.
    fn operation(mut self, path: &str, methods: MethodRouter<AppState>) -> Self {
        self.router = self
            .router
            .route(path, methods.fallback(fhir_api::method_not_allowed));
        if let Some(name) = path.rsplit('/').next().and_then(|s| s.strip_prefix('$')) {
            self.interactions.declare_operation(name);
        }
        self
    }
}

fn fhir_routes() -> (Router<AppState>, Interactions) {
    use axum::routing::post;
    let table = RouteTable {
        router: Router::new(),
        interactions: Interactions::default(),
    }
    .route(
        "/fhir",
        post(fhir_api::bundle).get(fhir_api::search_system),
        Level::System,
        &["transaction", "batch", "search-system"],
    )
    .route(
        "/fhir/_history",
        get(fhir_api::history_system),
        Level::System,
        &["history-system"],
    )
    .route(
        "/fhir/{type}",
        get(fhir_api::search_type)
            .post(fhir_api::create)
            .put(fhir_api::update_conditional)
            .patch(fhir_api::patch_conditional)
            .delete(fhir_api::delete_conditional),
        Level::Type,
        &["search-type", "create"],
    )
    .route(
        "/fhir/{type}/_history",
        get(fhir_api::history_type),
        Level::Type,
        &["history-type"],
    )
    .route(
        "/fhir/{type}/{id}",
        get(fhir_api::read)
            .put(fhir_api::update)
            .patch(fhir_api::patch)
            .delete(fhir_api::delete),
        Level::Type,
        &["read", "update", "patch", "delete"],
    )
    .route(
        "/fhir/{type}/{id}/_history",
        get(fhir_api::history_instance),
        Level::Type,
        &["history-instance"],
    )
    .route(
        "/fhir/{type}/{id}/_history/{vid}",
        get(fhir_api::vread),
        Level::Type,
        &["vread"],
    )
    // Search with the parameters in a form body (R4 §3.1.1.1.1).
    .route(
        "/fhir/{type}/_search",
        post(fhir_api::search_type_post),
        Level::Type,
        &["search-type"],
    )
    .route(
        "/fhir/_search",
        post(fhir_api::search_system_post),
        Level::System,
        &["search-system"],
    )
    .operation("/fhir/{type}/$validate", post(fhir_api::validate))
    .operation(
        "/fhir/{type}/{id}/$validate",
        post(fhir_api::validate_instance),
    );
    // Aidbox's operation on AidboxTopicDestination (docs/subscriptions.md);
    // not one of HL7's, so the CapabilityStatement's operations leave it out.
    let mut table = table;
    table.router = table.router.route(
        "/fhir/{type}/{id}/$status",
        get(fhir_api::destination_status).fallback(fhir_api::method_not_allowed),
    );
    (table.router, table.interactions)
}

async fn metadata(State(app): State<AppState>) -> Response {
    crate::response::fhir_json(StatusCode::OK, app.capability.as_str().to_owned())
}

/// Opens the store, loads clients and policies, applies the init bundle and
/// builds the router. Nothing listens yet.
pub async fn build_app(settings: Settings) -> Result<App, StartupError> {
    let app = open(settings, Guard::Authenticated).await?;
    reindex_if_stale(&app).await?;
    if let Some(path) = app.state.settings.init_bundle.clone() {
        let base_url = app.state.settings.base_url.as_deref();
        crate::init_bundle::apply(&app.state.rest, base_url, &path)
            .await
            .map_err(|message| StartupError::InitBundle {
                path: path.display().to_string(),
                message,
            })?;
    }
    auth::spawn_recheck(
        &app.state.auth,
        app.state.store.clone(),
        app.state.settings.auth_recheck,
    );
    // Notifications queued before this start (even by a process that was
    // killed) are delivered now (docs/subscriptions.md).
    app.state
        .rest
        .subscriptions()
        .start(&app.state.store, app.state.settings.auth_recheck);
    Ok(app)
}

/// Builds the search index rows of data stored before the index existed
/// (or by other definitions), before the port opens (docs/search.md).
async fn reindex_if_stale(app: &App) -> Result<(), StartupError> {
    let started = Instant::now();
    let indexed =
        app.state
            .rest
            .reindex_if_stale()
            .await
            .map_err(|source| StartupError::Database {
                url: app.state.settings.database.masked(),
                source,
            })?;
    if let Some(count) = indexed {
        tracing::info!(
            resources = count,
            seconds = started.elapsed().as_secs_f64(),
            version = fhirbox_rest::indexing::INDEX_VERSION,
            "search index built"
        );
    }
    Ok(())
}

/// Opens the store, starts the vault resolver and the authenticator, and
/// assembles the router.
async fn open(settings: Settings, guard: Guard) -> Result<App, StartupError> {
    let database_error = |source| StartupError::Database {
        url: settings.database.masked(),
        source,
    };
    let store = Store::open(settings.database.expose())
        .await
        .map_err(database_error)?;
    let metrics = Metrics::new();
    let vault = crate::vault::start(&settings, &metrics)?;
    let root = settings
        .root_client
        .as_ref()
        .map(|r| (r.id.as_str(), &r.secret));
    let mut auth = AuthService::start(
        &store,
        root,
        settings.token_signing_key.as_ref(),
        vault.clone(),
    )
    .await
    .map_err(database_error)?;
    if let (Some(path), Some(base)) = (&settings.id_token_key_file, &settings.base_url) {
        let key = fhirbox_auth::signin::id_token::IdTokenKey::new(path.clone(), base.clone());
        key.check().map_err(StartupError::IdTokenKey)?;
        auth.configure_id_tokens(key);
    }
    auth.configure_external(fhirbox_auth::external::ExternalOptions {
        timeout: settings.issuer_timeout,
        events: metrics.token_events(),
    });
    let subscriptions = fhirbox_subscriptions::Subscriptions::load(
        &store,
        vault.clone(),
        settings.base_url.clone(),
        metrics.delivery_events(),
    )
    .await
    .map_err(database_error)?;
    let structure = validator(settings.validation)?;
    let checks = WriteChecks {
        vault,
        structure,
        max_body_bytes: settings.max_body_bytes,
        max_bundle_entries: settings.max_bundle_entries,
        conditional_delete_max: settings.conditional_delete_max,
    };
    Ok(assemble(
        settings,
        store,
        auth,
        metrics,
        checks,
        subscriptions,
        guard,
    ))
}

/// The structural validator `BOX_VALIDATION` asks for (docs/validation.md).
pub fn validator(
    mode: Validation,
) -> Result<Option<Arc<fhirbox_validation::Validator>>, fhirbox_validation::SchemaError> {
    use fhirbox_validation::{UnknownElements, Validator};
    match mode {
        Validation::Strict => Validator::shared(UnknownElements::Refuse).map(Some),
        Validation::AllowUnknownElements => Validator::shared(UnknownElements::Allow).map(Some),
        Validation::Off => {
            tracing::warn!(
                "BOX_VALIDATION=off: resources are stored without structural validation"
            );
            Ok(None)
        }
    }
}

/// Whether the API routes sit behind authentication. Only benchmark builds
/// (feature `bench-baseline`) can ask for `Open`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    Authenticated,
    #[cfg_attr(not(feature = "bench-baseline"), allow(dead_code))]
    Open,
}

/// The same application with the authentication layer left out, for the
/// benchmark baseline that authenticated throughput is divided by. It exists
/// only in builds with the `bench-baseline` feature, which the `fhirbox`
/// binary never has: there is no runtime switch that turns security off.
#[cfg(feature = "bench-baseline")]
pub async fn build_app_without_auth_for_benchmarks(
    settings: Settings,
) -> Result<App, StartupError> {
    open(settings, Guard::Open).await
}

/// Builds the router around an open store and a loaded authenticator.
fn assemble(
    settings: Settings,
    store: Store,
    auth: AuthService,
    metrics: Metrics,
    checks: WriteChecks,
    subscriptions: fhirbox_subscriptions::Subscriptions,
    guard: Guard,
) -> App {
    let (api, mut interactions) = fhir_routes();
    interactions.multiple_delete = settings.conditional_delete_max > 1;
    let capability = capability_statement(&interactions, settings.base_url.as_deref());
    let auth = Arc::new(auth);
    let metrics = Arc::new(metrics);
    let vault = checks.vault.clone();
    let rest = Rest::new(
        store.clone(),
        auth.clone(),
        checks,
        metrics.clone(),
        subscriptions,
    );
    let public_base = PublicBase(settings.base_url.as_deref().map(Arc::from));
    let state = AppState {
        store,
        settings: Arc::new(settings),
        started: Instant::now(),
        capability: Arc::new(capability),
        auth,
        metrics,
        vault,
        rest,
        public_base,
    };
    // Operator endpoints sit behind authentication like the API: /admin/secrets
    // requires root; /metrics (which names secrets) whoever a policy allows.
    let api = api
        .route(
            "/admin/secrets",
            get(crate::vault::admin_secrets).fallback(fhir_api::method_not_allowed),
        )
        .route("/metrics", get(crate::metrics::expose));
    let api = match guard {
        Guard::Authenticated => api.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::layer::require_auth,
        )),
        // The baseline acts as root: handlers that need a caller still get one.
        Guard::Open => api.layer(axum::Extension(auth::Identity::Root {
            id: "(benchmark baseline)".to_owned(),
        })),
    };
    // Metadata, health, the token endpoint and sign-in answer without credentials.
    let public = Router::new()
        .route(
            "/fhir/metadata",
            get(metadata).fallback(fhir_api::method_not_allowed),
        )
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route(
            "/auth/token",
            axum::routing::post(auth::endpoint::token).fallback(fhir_api::method_not_allowed),
        )
        .route(
            "/auth/authorize",
            get(auth::signin::authorize).fallback(fhir_api::method_not_allowed),
        )
        .route(
            "/auth/redirect/{idp}",
            get(auth::signin::redirect).fallback(fhir_api::method_not_allowed),
        )
        .route(
            "/auth/callback/{idp}",
            get(auth::signin::callback).fallback(fhir_api::method_not_allowed),
        )
        .route(
            "/auth/jwks",
            get(auth::signin::jwks).fallback(fhir_api::method_not_allowed),
        )
        .route(
            "/.well-known/openid-configuration",
            get(auth::signin::openid_configuration).fallback(fhir_api::method_not_allowed),
        );
    let router = public
        .merge(api)
        .fallback(fhir_api::unknown_route)
        .layer(middleware::from_fn(crate::extract::negotiate))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            logging::log_request,
        ))
        .with_state(state.clone());
    App { state, router }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets in-flight
/// requests finish. Connections are capped and timed as `settings.connections`
/// says (see `transport`).
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = app.state.store.clone();
    let subscriptions = app.state.rest.subscriptions().clone();
    let limits = app.state.settings.connections.clone();
    let result = crate::transport::serve(listener, app.router, limits, shutdown).await;
    // Delivery gives its leases (and their connections) up first.
    subscriptions.stop(Duration::from_secs(10)).await;
    store.close().await;
    result
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// Starts the server from settings and runs until a shutdown signal. Without
/// a configured root secret, the first run generates one (see `root_secret`).
pub async fn run(mut settings: Settings) -> Result<(), StartupError> {
    let port = settings.port;
    tracing::info!(database = %settings.database, port, "starting fhirbox");
    crate::root_secret::ensure_root_client(&mut settings);
    let app = build_app(settings).await?;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| StartupError::Listen { port, source })?;
    // One signal stops both listeners.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let metrics_server = match app.state.settings.metrics_port {
        Some(metrics_port) => {
            let metrics_listener =
                TcpListener::bind(("0.0.0.0", metrics_port))
                    .await
                    .map_err(|source| StartupError::Listen {
                        port: metrics_port,
                        source,
                    })?;
            tracing::info!(
                port = metrics_port,
                "metrics port: GET /metrics without credentials"
            );
            Some(tokio::spawn(crate::transport::serve(
                metrics_listener,
                crate::metrics::scrape_router(app.state.metrics.clone()),
                app.state.settings.connections.clone(),
                stopped(stopping.clone()),
            )))
        }
        None => None,
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    tracing::info!(port, "listening");
    let result = serve(listener, app, stopped(stopping)).await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    result.map_err(|source| StartupError::Listen { port, source })
}
