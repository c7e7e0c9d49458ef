//! The REST layer used the way the server uses it, with no HTTP in between:
//! each interaction answers with a `Reply` or a `RestError`, writes go
//! through the store, and a bundle entry is authorized like a request of its
//! own. Each test runs on SQLite always and on PostgreSQL when
//! `FHIRBOX_TEST_POSTGRES_URL` is set (ignored without it, failing under CI).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fhirbox_auth::{AuthService, Identity};
use fhirbox_rest::{ErrorKind, ReadConditions, Rest, RestEvents, ReturnPreference, WriteChecks};
use fhirbox_store::Store;
use fhirbox_test_support::postgres::TestDatabase;
use fhirbox_test_support::{backend_variants, Backend};
use fhirbox_validation::{UnknownElements, Validator};
use serde_json::{json, Value};

backend_variants!(
    setup = crate::open;
    interactions_answer_with_replies_and_kinds,
    every_bundle_entry_is_authorized_on_its_own,
);

const BASE: &str = "http://fhirbox.test/fhir";

/// Counts the bundle entries access control refused.
#[derive(Default)]
struct Denials(AtomicUsize);

impl RestEvents for Denials {
    fn entry_denied(&self, _reason: &'static str) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Fixture {
    rest: Rest,
    denials: Arc<Denials>,
    _sqlite_dir: Option<tempfile::TempDir>,
    _postgres: Option<TestDatabase>,
}

async fn open(backend: Backend) -> Fixture {
    let (url, sqlite_dir, postgres) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("fhirbox.db").display());
            (url, Some(dir), None)
        }
        Backend::Postgres => {
            let db = TestDatabase::create().await;
            (db.url(), None, Some(db))
        }
    };
    let store = Store::open(&url).await.expect("the store opens");
    let auth = AuthService::start(&store, None, None, None)
        .await
        .expect("the authenticator loads");
    let denials = Arc::new(Denials::default());
    let checks = WriteChecks {
        vault: None,
        structure: Some(Validator::shared(UnknownElements::Refuse).expect("the schema compiles")),
        max_body_bytes: 1 << 20,
        max_bundle_entries: 100,
        conditional_delete_max: 1,
    };
    let subscriptions = fhirbox_subscriptions::Subscriptions::load(
        &store,
        None,
        None,
        Arc::new(fhirbox_subscriptions::delivery::NoEvents),
    )
    .await
    .expect("topics and destinations load");
    let rest = Rest::new(
        store,
        Arc::new(auth),
        checks,
        denials.clone(),
        subscriptions,
    );
    Fixture {
        rest,
        denials,
        _sqlite_dir: sqlite_dir,
        _postgres: postgres,
    }
}

fn body(reply: &fhirbox_rest::Reply) -> Value {
    serde_json::from_str(reply.body.as_deref().expect("a body")).expect("JSON")
}

async fn interactions_answer_with_replies_and_kinds(f: Fixture) {
    let rest = &f.rest;
    let created = rest
        .create(
            BASE,
            "Patient",
            json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]}),
            ReturnPreference::Representation,
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.etag.as_deref(), Some("W/\"1\""));
    let id = body(&created)["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.location.as_deref(),
        Some(format!("{BASE}/Patient/{id}/_history/1").as_str())
    );
    assert!(created.last_modified.unwrap().ends_with(" GMT"));

    let read = rest
        .read("Patient", &id, &ReadConditions::default(), &Vec::new())
        .await
        .unwrap();
    assert_eq!(body(&read)["name"][0]["family"], "Chalmers");

    // A stale If-Match is refused, and nothing changes.
    let stale = rest
        .update(
            BASE,
            "Patient",
            &id,
            json!({"resourceType": "Patient", "id": id, "active": true}),
            Some(7),
            ReturnPreference::Minimal,
        )
        .await
        .unwrap_err();
    assert_eq!(stale.kind, ErrorKind::PreconditionFailed);
    let updated = rest
        .update(
            BASE,
            "Patient",
            &id,
            json!({"resourceType": "Patient", "id": id, "active": true}),
            Some(1),
            ReturnPreference::Minimal,
        )
        .await
        .unwrap();
    assert_eq!((updated.status, updated.body), (200, None));
    assert_eq!(updated.etag.as_deref(), Some("W/\"2\""));

    let found = rest
        .search(
            BASE,
            Some("Patient"),
            &vec![("_id".into(), id.clone())],
            false,
            &Identity::Root { id: "root".into() },
        )
        .await
        .unwrap();
    let bundle = body(&found);
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["active"], true);

    let deleted = rest
        .delete("Patient", &id, None, ReturnPreference::Representation)
        .await
        .unwrap();
    assert_eq!((deleted.status, deleted.body), (204, None));
    assert_eq!(
        rest.read("Patient", &id, &ReadConditions::default(), &Vec::new())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Gone
    );
    assert_eq!(
        rest.read("Patient", "nobody", &ReadConditions::default(), &Vec::new())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        rest.read("NoSuchType", "x", &ReadConditions::default(), &Vec::new())
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
    let history = rest
        .history(
            BASE,
            fhirbox_store::HistoryScope::Instance {
                resource_type: "Patient".into(),
                id: id.clone(),
            },
            &Vec::new(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(body(&history)["total"], 3);
}

async fn every_bundle_entry_is_authorized_on_its_own(f: Fixture) {
    let rest = &f.rest;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "active": true}},
    ]});
    // A client no policy allows: the entry is refused and counted, nothing stored.
    let stranger = Identity::Client {
        id: "stranger".into(),
    };
    let refused = rest
        .bundle(BASE, &batch, &stranger, ReturnPreference::Representation)
        .await
        .unwrap();
    let entry = &body(&refused)["entry"][0];
    assert_eq!(entry["response"]["status"], "403 Forbidden");
    assert_eq!(f.denials.0.load(Ordering::SeqCst), 1);
    let none = rest
        .search(
            BASE,
            Some("Patient"),
            &Vec::new(),
            false,
            &Identity::Root { id: "root".into() },
        )
        .await
        .unwrap();
    assert_eq!(body(&none)["total"], 0);

    // Root may: the same bundle stores the Patient.
    let root = Identity::Root { id: "root".into() };
    let applied = rest
        .bundle(BASE, &batch, &root, ReturnPreference::Representation)
        .await
        .unwrap();
    let entry = &body(&applied)["entry"][0];
    assert_eq!(entry["response"]["status"], "201 Created");
    assert_eq!(entry["resource"]["active"], true);
    assert_eq!(f.denials.0.load(Ordering::SeqCst), 1);

    // A transaction with one refused entry applies nothing.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Patient/{}", entry["resource"]["id"].as_str().unwrap())}},
    ]});
    let e = rest
        .bundle(BASE, &transaction, &stranger, ReturnPreference::Minimal)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert!(
        e.message.starts_with("the transaction was not applied"),
        "{}",
        e.message
    );
    let still = rest
        .search(
            BASE,
            Some("Patient"),
            &Vec::new(),
            false,
            &Identity::Root { id: "root".into() },
        )
        .await
        .unwrap();
    assert_eq!(body(&still)["total"], 1);
}
