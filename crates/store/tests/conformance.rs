//! What every backend of the store must do, through the crate's public API
//! only: read, write (create, update, modify, delete, version numbers,
//! If-Match), history, search by `_id` and `_lastUpdated` with paging, and
//! concurrent writers. Each test function runs on a fresh SQLite file always
//! and on a fresh PostgreSQL database (dropped afterwards) when
//! `FHIRBOX_TEST_POSTGRES_URL` is set; without it the PostgreSQL variants show
//! as ignored, and under CI they fail instead. New search parameters add their
//! cases here, so both backends keep answering alike.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use fhirbox_store::{
    Change, ChangeMarker, Condition, Cursor, Filter, HistoryQuery, HistoryScope, IndexEntry,
    IndexKind, Indexer, Notify, Outbox, OutboxEvent, RangeOp, ResourceHistory, ResourceRead,
    ResourceSearch, ResourceWrite, SearchIndex, SearchQuery, SortBy, SortField, SortKey, Store,
    StoreError, StoreHealth, StoredResource, TimeBound, TotalMode, Transform, UriOp, WriteKind,
    WriteOp, WriteOutcome, BOUNDED_TOTAL,
};
use fhirbox_test_support::postgres::TestDatabase;
use fhirbox_test_support::{backend_variants, Backend};
use serde_json::{json, Value};

backend_variants!(
    setup = crate::open_store;
    create_read_and_vread_return_each_version,
    modify_transforms_the_current_version_and_a_refusal_stores_nothing,
    delete_leaves_a_tombstone_and_an_update_brings_the_resource_back,
    if_match_must_name_the_current_live_version,
    write_all_is_all_or_nothing,
    history_lists_versions_newest_first_and_pages,
    search_by_id_and_last_updated_pages_through_current_versions,
    concurrent_updates_with_the_same_if_match_have_exactly_one_winner,
    concurrent_unconditional_updates_each_get_their_own_version,
    concurrent_write_sets_succeed_or_fail_each_on_their_own,
    the_change_marker_moves_with_every_write_of_its_types,
    index_rows_follow_writes_and_conditions_select_by_them,
    prefixes_match_by_code_point_on_both_backends,
    index_decided_searches_page_count_and_keep_to_their_type,
    searches_come_in_creation_order_and_page_by_it,
    bounded_totals_count_up_to_their_bound,
    sorts_by_parameters_keep_missing_last_and_page_both_ways,
    index_rows_of_any_number_are_written_whole,
    notifications_are_queued_with_the_change_and_taken_in_order,
);

/// A store on a database of its own, removed when the test ends.
struct TestStore {
    store: Store,
    _sqlite_dir: Option<tempfile::TempDir>,
    _postgres: Option<TestDatabase>,
}

impl Deref for TestStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

async fn open_store(backend: Backend) -> TestStore {
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
    let store = Store::open(&url)
        .await
        .expect("the store opens and migrates");
    TestStore {
        store,
        _sqlite_dir: sqlite_dir,
        _postgres: postgres,
    }
}

fn op(resource_type: &str, id: &str, kind: WriteKind) -> WriteOp {
    WriteOp {
        resource_type: resource_type.into(),
        id: id.into(),
        kind,
        if_match: None,
        finalize: None,
        index: None,
        matching: None,
        notify: None,
    }
}

fn if_match(version: i64, op: WriteOp) -> WriteOp {
    WriteOp {
        if_match: Some(version),
        ..op
    }
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
}

fn put(resource_type: &str, id: &str, family: &str) -> WriteOp {
    let body = json!({"resourceType": resource_type, "id": id, "name": [{"family": family}]});
    op(resource_type, id, WriteKind::Put(body))
}

fn body(resource: &StoredResource) -> Value {
    serde_json::from_str(&resource.body).expect("a stored body is JSON")
}

fn ids(resources: &[StoredResource]) -> Vec<&str> {
    resources.iter().map(|r| r.id.as_str()).collect()
}

fn versions(resources: &[StoredResource]) -> Vec<i64> {
    resources.iter().map(|r| r.version_id).collect()
}

async fn write(store: &Store, op: WriteOp) -> WriteOutcome {
    let what = format!("{op:?}");
    store
        .write(op)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn create_read_and_vread_return_each_version(store: TestStore) {
    let created = write(
        &store,
        op("Patient", "a", WriteKind::Create(patient("a", "One"))),
    )
    .await;
    assert!(created.created && created.changed);
    assert_eq!(created.resource.version_id, 1);
    assert!(!created.resource.deleted);
    let stored = body(&created.resource);
    assert_eq!(stored["resourceType"], "Patient");
    assert_eq!(stored["id"], "a");
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_eq!(
        stored["meta"]["lastUpdated"],
        created.resource.last_updated_text()
    );
    assert_eq!(stored["name"][0]["family"], "One");

    let updated = write(&store, put("Patient", "a", "Two")).await;
    assert!(!updated.created && updated.changed);
    assert_eq!(updated.resource.version_id, 2);
    assert!(updated.resource.last_updated >= created.resource.last_updated);
    assert_eq!(body(&updated.resource)["meta"]["versionId"], "2");

    assert_eq!(
        store.read("Patient", "a").await.unwrap(),
        Some(updated.resource.clone())
    );
    assert_eq!(
        store.vread("Patient", "a", 1).await.unwrap(),
        Some(created.resource)
    );
    assert_eq!(
        store.vread("Patient", "a", 2).await.unwrap(),
        Some(updated.resource)
    );
    assert_eq!(store.vread("Patient", "a", 3).await.unwrap(), None);
    assert_eq!(store.read("Patient", "missing").await.unwrap(), None);
    assert_eq!(
        store.read("Observation", "a").await.unwrap(),
        None,
        "ids are per type"
    );

    let again = store
        .write(op("Patient", "a", WriteKind::Create(patient("a", "Three"))))
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        store
            .read("Patient", "a")
            .await
            .unwrap()
            .unwrap()
            .version_id,
        2
    );
}

async fn modify_transforms_the_current_version_and_a_refusal_stores_nothing(store: TestStore) {
    write(&store, put("Patient", "a", "Before")).await;
    let rename: Transform = Arc::new(|current| {
        let mut resource: Value = serde_json::from_str(&current.body)
            .map_err(|e| fhirbox_store::Refusal::internal(e.to_string()))?;
        resource["name"][0]["family"] = "After".into();
        Ok(resource)
    });
    let renamed = write(
        &store,
        op("Patient", "a", WriteKind::Modify(rename.clone())),
    )
    .await;
    assert_eq!(renamed.resource.version_id, 2);
    assert_eq!(body(&renamed.resource)["name"][0]["family"], "After");

    let refuse: Transform = Arc::new(|_| Err(fhirbox_store::Refusal::invalid("not this change")));
    let refused = store
        .write(op("Patient", "a", WriteKind::Modify(refuse)))
        .await;
    assert!(
        matches!(&refused, Err(StoreError::Rejected(e)) if e.to_string() == "not this change"),
        "{refused:?}"
    );
    assert_eq!(
        store.read("Patient", "a").await.unwrap(),
        Some(renamed.resource)
    );

    let missing = store
        .write(op("Patient", "missing", WriteKind::Modify(rename)))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
}

async fn delete_leaves_a_tombstone_and_an_update_brings_the_resource_back(store: TestStore) {
    write(&store, put("Patient", "a", "Alive")).await;
    let deleted = write(&store, op("Patient", "a", WriteKind::Delete)).await;
    assert!(deleted.changed && !deleted.created);
    assert!(deleted.resource.deleted);
    assert_eq!(deleted.resource.version_id, 2);
    assert_eq!(deleted.resource.body, "");
    assert_eq!(
        store.read("Patient", "a").await.unwrap(),
        Some(deleted.resource.clone())
    );

    let again = write(&store, op("Patient", "a", WriteKind::Delete)).await;
    assert!(
        !again.changed,
        "deleting a deleted resource changes nothing"
    );
    assert_eq!(again.resource, deleted.resource);

    let rename: Transform = Arc::new(|current| Ok(body(current)));
    let modify = store
        .write(op("Patient", "a", WriteKind::Modify(rename)))
        .await;
    assert!(
        matches!(modify, Err(StoreError::Gone { version_id: 2, .. })),
        "{modify:?}"
    );
    let missing = store
        .write(op("Patient", "missing", WriteKind::Delete))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );

    let back = write(&store, put("Patient", "a", "Back")).await;
    assert!(
        back.created,
        "an update of a deleted resource creates it again"
    );
    assert_eq!(back.resource.version_id, 3);
    assert!(
        store
            .vread("Patient", "a", 2)
            .await
            .unwrap()
            .unwrap()
            .deleted
    );
}

async fn if_match_must_name_the_current_live_version(store: TestStore) {
    write(&store, put("Patient", "a", "One")).await;
    let second = write(&store, if_match(1, put("Patient", "a", "Two"))).await;
    assert_eq!(second.resource.version_id, 2);

    let stale = store.write(if_match(1, put("Patient", "a", "Stale"))).await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionConflict {
                expected: 1,
                current: Some(2),
                ..
            })
        ),
        "{stale:?}"
    );
    let stale_delete = store
        .write(if_match(1, op("Patient", "a", WriteKind::Delete)))
        .await;
    assert!(
        matches!(stale_delete, Err(StoreError::VersionConflict { .. })),
        "{stale_delete:?}"
    );
    assert_eq!(
        store.read("Patient", "a").await.unwrap(),
        Some(second.resource),
        "a conflict writes nothing"
    );

    let missing = store
        .write(if_match(1, put("Patient", "missing", "New")))
        .await;
    assert!(
        matches!(
            missing,
            Err(StoreError::VersionConflict { current: None, .. })
        ),
        "{missing:?}"
    );

    let deleted = write(&store, if_match(2, op("Patient", "a", WriteKind::Delete))).await;
    assert_eq!(deleted.resource.version_id, 3);
    let on_tombstone = store.write(if_match(3, put("Patient", "a", "Back"))).await;
    assert!(
        matches!(on_tombstone, Err(StoreError::VersionConflict { .. })),
        "a deleted resource has no live version to match: {on_tombstone:?}"
    );
}

async fn write_all_is_all_or_nothing(store: TestStore) {
    write(&store, put("Patient", "a", "One")).await;
    let failed = store
        .write_all(vec![
            put("Patient", "b", "New"),
            op("Patient", "a", WriteKind::Create(patient("a", "Again"))),
        ])
        .await;
    assert!(
        matches!(failed, Err(StoreError::AlreadyExists { .. })),
        "{failed:?}"
    );
    assert_eq!(
        store.read("Patient", "b").await.unwrap(),
        None,
        "rolled back"
    );

    let outcomes = store
        .write_all(vec![put("Patient", "b", "New"), put("Patient", "a", "Two")])
        .await
        .unwrap();
    let written: Vec<_> = outcomes.iter().map(|o| &o.resource).cloned().collect();
    assert_eq!(ids(&written), ["b", "a"]);
    assert_eq!(versions(&written), [1, 2]);
}

fn history(scope: HistoryScope, count: u32) -> HistoryQuery {
    HistoryQuery {
        scope,
        since: None,
        count,
        cursor: None,
    }
}

fn instance(resource_type: &str, id: &str) -> HistoryScope {
    HistoryScope::Instance {
        resource_type: resource_type.into(),
        id: id.into(),
    }
}

async fn history_lists_versions_newest_first_and_pages(store: TestStore) {
    let mut written = Vec::new();
    written.push(write(&store, put("Patient", "a", "One")).await.resource);
    written.push(write(&store, put("Patient", "a", "Two")).await.resource);
    written.push(
        write(&store, op("Patient", "a", WriteKind::Delete))
            .await
            .resource,
    );
    written.push(
        write(&store, put("Observation", "b", "Other"))
            .await
            .resource,
    );

    let first = store
        .history(history(instance("Patient", "a"), 2))
        .await
        .unwrap();
    assert_eq!(versions(&first.entries), [3, 2]);
    assert!(
        first.entries[0].deleted,
        "deletions are part of the history"
    );
    assert_eq!(first.total, Some(3));
    let history_cursor = first.next.clone();
    let rest = store
        .history(HistoryQuery {
            cursor: first.next.clone(),
            ..history(instance("Patient", "a"), 2)
        })
        .await
        .unwrap();
    assert_eq!(versions(&rest.entries), [1]);
    assert_eq!(rest.entries[0], written[0]);
    assert!(rest.next.is_none());

    let of_type = HistoryScope::Type {
        resource_type: "Patient".into(),
    };
    let of_type = store.history(history(of_type, 10)).await.unwrap();
    assert_eq!(versions(&of_type.entries), [3, 2, 1]);
    let system = store
        .history(history(HistoryScope::System, 10))
        .await
        .unwrap();
    let newest_first: Vec<_> = written.iter().rev().cloned().collect();
    assert_eq!(system.entries, newest_first);
    assert_eq!(system.total, Some(4));

    let since = written[1].last_updated;
    let recent = store
        .history(HistoryQuery {
            since: Some(since),
            ..history(HistoryScope::System, 10)
        })
        .await
        .unwrap();
    let expected: Vec<_> = newest_first
        .iter()
        .filter(|r| r.last_updated >= since)
        .cloned()
        .collect();
    assert_eq!(recent.entries, expected);

    let in_search = store
        .search(SearchQuery {
            cursor: history_cursor,
            ..patients(10)
        })
        .await;
    assert!(
        matches!(in_search, Err(StoreError::InvalidCursor)),
        "a history cursor does not page a search: {in_search:?}"
    );
}

fn patients(count: u32) -> SearchQuery {
    SearchQuery {
        resource_type: Some("Patient".into()),
        count,
        ..Default::default()
    }
}

async fn search_by_id_and_last_updated_pages_through_current_versions(store: TestStore) {
    // Patients p1..p5 (p4 deleted afterwards) and one Observation; the
    // expectations below are computed from the timestamps the store gave.
    let mut live = BTreeMap::new();
    for i in 1..=5 {
        let id = format!("p{i}");
        let written = write(&store, put("Patient", &id, "Family")).await;
        live.insert(id, written.resource.last_updated);
    }
    write(&store, op("Patient", "p4", WriteKind::Delete)).await;
    live.remove("p4");
    write(&store, put("Observation", "o1", "Other")).await;

    let by_id = store
        .search(SearchQuery {
            ids: Some(vec!["p1".into(), "p3".into(), "p4".into(), "zz".into()]),
            ..patients(10)
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&by_id.resources),
        ["p1", "p3"],
        "deleted and unknown ids are not found"
    );
    assert!(by_id
        .resources
        .iter()
        .all(|r| !r.deleted && r.version_id == 1));

    let first = store
        .search(SearchQuery {
            total: TotalMode::Accurate,
            ..patients(2)
        })
        .await
        .unwrap();
    assert_eq!(ids(&first.resources), ["p1", "p2"]);
    assert_eq!(first.total, Some(4));
    assert!(first.previous.is_none());
    // The total is the same whatever the page holds: none of it (count 0),
    // exactly all of it, more room than matches, or a later page.
    for (count, cursor) in [(0, None), (4, None), (10, None), (2, first.next.clone())] {
        let page = store
            .search(SearchQuery {
                total: TotalMode::Accurate,
                cursor,
                ..patients(count)
            })
            .await
            .unwrap();
        assert_eq!(page.total, Some(4), "_count={count}");
    }
    let second = store
        .search(SearchQuery {
            cursor: first.next.clone(),
            ..patients(2)
        })
        .await
        .unwrap();
    assert_eq!(ids(&second.resources), ["p3", "p5"]);
    assert!(second.next.is_none());
    let back = store
        .search(SearchQuery {
            cursor: second.previous.clone(),
            ..patients(2)
        })
        .await
        .unwrap();
    assert_eq!(ids(&back.resources), ["p1", "p2"]);

    let everything = store
        .search(SearchQuery {
            count: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&everything.resources),
        ["p1", "p2", "p3", "p5", "o1"],
        "creation order across types"
    );

    let t = live["p3"];
    let matching = |keep: &dyn Fn(i64) -> bool| -> Vec<&str> {
        live.iter()
            .filter(|(_, updated)| keep(**updated))
            .map(|(id, _)| id.as_str())
            .collect()
    };
    for (bounds, expected) in [
        (vec![TimeBound::AtOrAfter(t)], matching(&|u| u >= t)),
        (vec![TimeBound::Before(t)], matching(&|u| u < t)),
        (
            vec![TimeBound::AtOrAfter(t), TimeBound::Before(t + 1_000)],
            matching(&|u| u >= t && u < t + 1_000),
        ),
    ] {
        let found = store
            .search(SearchQuery {
                last_updated: bounds.clone(),
                ..patients(10)
            })
            .await
            .unwrap();
        assert_eq!(ids(&found.resources), expected, "{bounds:?}");
    }

    let newest_first = store
        .search(SearchQuery {
            sort: SortKey::LastUpdated,
            descending: true,
            ..patients(10)
        })
        .await
        .unwrap();
    let mut expected: Vec<(i64, &str)> = live.iter().map(|(id, u)| (*u, id.as_str())).collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<&str> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids(&newest_first.resources), expected);

    let other_sort = store
        .search(SearchQuery {
            sort: SortKey::LastUpdated,
            cursor: first.next,
            ..patients(2)
        })
        .await;
    assert!(
        matches!(other_sort, Err(StoreError::InvalidCursor)),
        "a cursor is valid only for the query it came from"
    );
}

const WRITERS: usize = 12;

/// Runs `WRITERS` writes at once, each from its own task.
async fn at_once(
    store: &Store,
    make: impl Fn(usize) -> WriteOp,
) -> Vec<Result<WriteOutcome, StoreError>> {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, op) = (store.clone(), make(i));
            tokio::spawn(async move { store.write(op).await })
        })
        .collect();
    let mut results = Vec::with_capacity(WRITERS);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn concurrent_updates_with_the_same_if_match_have_exactly_one_winner(store: TestStore) {
    write(&store, put("Patient", "race", "Start")).await;
    let results = at_once(&store, |i| {
        if_match(1, put("Patient", "race", &format!("W{i}")))
    })
    .await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].resource.version_id, 2);
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                lost,
                StoreError::VersionConflict {
                    expected: 1,
                    current: Some(2),
                    ..
                }
            ),
            "{lost:?}"
        );
    }
    assert_eq!(
        store.read("Patient", "race").await.unwrap().as_ref(),
        Some(&winners[0].resource)
    );
}

async fn concurrent_unconditional_updates_each_get_their_own_version(store: TestStore) {
    let results = at_once(&store, |i| put("Patient", "busy", &format!("W{i}"))).await;
    let outcomes: Vec<_> = results
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("unconditional writes all succeed");
    let created: Vec<_> = outcomes.iter().filter(|o| o.created).collect();
    assert_eq!(created.len(), 1, "exactly one write creates the resource");
    assert_eq!(created[0].resource.version_id, 1);
    let mut numbers: Vec<i64> = outcomes.iter().map(|o| o.resource.version_id).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=WRITERS as i64).collect::<Vec<_>>(),
        "one winner per version"
    );

    let all = store
        .history(history(instance("Patient", "busy"), 100))
        .await
        .unwrap();
    assert_eq!(all.total, Some(WRITERS as i64));
    let mut families: Vec<String> = all
        .entries
        .iter()
        .map(|r| body(r)["name"][0]["family"].as_str().unwrap().to_owned())
        .collect();
    families.sort();
    families.dedup();
    assert_eq!(families.len(), WRITERS, "every write is kept in history");
}

/// Writes that arrive together (which SQLite commits in one transaction,
/// each in a savepoint) still succeed or fail each on its own: a refused
/// write set leaves no version, no history and no index row, and does not
/// take the others down with it.
async fn concurrent_write_sets_succeed_or_fail_each_on_their_own(store: TestStore) {
    write(
        &store,
        indexed("base", json!({"name": [{"family": "Base"}]})),
    )
    .await;
    let refuse: Transform = Arc::new(|_| Err(fhirbox_store::Refusal::invalid("no")));
    const SETS: usize = 40;
    let tasks: Vec<_> = (0..SETS)
        .map(|i| {
            let store = store.store.clone();
            let family = format!("Fam{i}");
            let ops = match i % 4 {
                // succeeds
                0 => vec![indexed(
                    &format!("ok{i}"),
                    json!({"name": [{"family": family}]}),
                )],
                // a stale If-Match
                1 => vec![if_match(
                    7,
                    indexed("base", json!({"name": [{"family": family}]})),
                )],
                // a refused change
                2 => vec![op("Patient", "base", WriteKind::Modify(refuse.clone()))],
                // all or nothing: the second op names a missing resource
                _ => vec![
                    indexed(&format!("pair{i}"), json!({"name": [{"family": family}]})),
                    op("Patient", "missing", WriteKind::Modify(refuse.clone())),
                ],
            };
            tokio::spawn(async move { store.write_all(ops).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        match i % 4 {
            0 => assert_eq!(
                result.expect("a plain create succeeds")[0].resource.id,
                format!("ok{i}")
            ),
            1 => assert!(
                matches!(result, Err(StoreError::VersionConflict { .. })),
                "{i}: {result:?}"
            ),
            2 => assert!(
                matches!(result, Err(StoreError::Rejected(_))),
                "{i}: {result:?}"
            ),
            _ => assert!(
                matches!(result, Err(StoreError::NotFound { .. })),
                "{i}: {result:?}"
            ),
        }
    }
    for i in 0..SETS {
        let family = Condition::StringExact {
            param: "family".into(),
            value: format!("Fam{i}"),
        };
        let expected: Vec<String> = if i % 4 == 0 {
            vec![format!("ok{i}")]
        } else {
            vec![]
        };
        assert_eq!(
            found(&store, vec![vec![family]]).await,
            expected,
            "index rows of set {i}"
        );
        if i % 4 == 3 {
            assert_eq!(
                store.read("Patient", &format!("pair{i}")).await.unwrap(),
                None
            );
        }
    }
    let base = store
        .history(history(instance("Patient", "base"), 100))
        .await
        .unwrap();
    assert_eq!(
        base.total,
        Some(1),
        "refused writes leave no version of base"
    );
}

async fn the_change_marker_moves_with_every_write_of_its_types(store: TestStore) {
    store.ping().await.unwrap();
    assert_eq!(store.latest_change(&["Client"]).await.unwrap(), 0);
    write(&store, put("Client", "c", "One")).await;
    let after_client = store.latest_change(&["Client"]).await.unwrap();
    assert!(after_client > 0);
    write(&store, put("Patient", "p", "One")).await;
    assert_eq!(
        store.latest_change(&["Client"]).await.unwrap(),
        after_client,
        "writes of other types do not move it"
    );
    assert!(store.latest_change(&["Client", "Patient"]).await.unwrap() > after_client);
    write(&store, op("Client", "c", WriteKind::Delete)).await;
    assert!(store.latest_change(&["Client"]).await.unwrap() > after_client);
}

#[tokio::test]
async fn unsupported_database_urls_are_refused() {
    for url in ["mysql://localhost/fhir", "sqlite:", "sqlite::memory:"] {
        let opened = Store::open(url).await;
        assert!(
            matches!(opened, Err(StoreError::Config(_))),
            "{url}: {:?}",
            opened.err()
        );
    }
}

/// An indexer of the test's own: `family` (string), `status` (token), `born`
/// (a date range), `score` (number), `org` (reference), `url` (uri).
fn test_indexer() -> Indexer {
    Arc::new(|_resource_type: &str, body: &Value| {
        let mut rows = Vec::new();
        if let Some(f) = body.pointer("/name/0/family").and_then(Value::as_str) {
            rows.push(IndexEntry::String {
                param: "family".into(),
                normalized: f.to_lowercase(),
                exact: f.into(),
            });
        }
        if let Some(s) = body.get("status").and_then(Value::as_str) {
            rows.push(IndexEntry::Token {
                param: "status".into(),
                system: Some("urn:s".into()),
                code: Some(s.into()),
                text: None,
            });
        }
        if let Some(year) = body.get("born").and_then(Value::as_i64) {
            rows.push(IndexEntry::Date {
                param: "born".into(),
                low: year * 10,
                high: year * 10 + 10,
            });
        }
        if let Some(n) = body.get("score").and_then(Value::as_f64) {
            rows.push(IndexEntry::Number {
                param: "score".into(),
                value: n,
            });
        }
        if let Some(o) = body.get("org").and_then(Value::as_str) {
            rows.push(IndexEntry::Reference {
                param: "org".into(),
                target_type: Some("Organization".into()),
                target_id: Some(o.into()),
                url: format!("Organization/{o}"),
            });
        }
        if let Some(u) = body.get("url").and_then(Value::as_str) {
            rows.push(IndexEntry::Uri {
                param: "url".into(),
                uri: u.into(),
            });
        }
        rows
    })
}

fn indexed(id: &str, body: Value) -> WriteOp {
    let mut body = body;
    body["resourceType"] = json!("Patient");
    body["id"] = json!(id);
    WriteOp {
        index: Some(test_indexer()),
        matching: None,
        notify: None,
        ..op("Patient", id, WriteKind::Put(body))
    }
}

async fn found(store: &TestStore, conditions: Vec<Vec<Condition>>) -> Vec<String> {
    let page = store
        .search(SearchQuery {
            resource_type: Some("Patient".into()),
            count: 100,
            filters: conditions
                .into_iter()
                .map(|any_of| Filter { any_of })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("the search runs");
    page.resources.into_iter().map(|r| r.id).collect()
}

async fn index_rows_follow_writes_and_conditions_select_by_them(store: TestStore) {
    write(
        &store,
        indexed(
            "a",
            json!({"name": [{"family": "Ng_%"}], "status": "on", "born": 1980, "score": 0.5,
        "org": "o1", "url": "http://x.org/a/b"}),
        ),
    )
    .await;
    write(
        &store,
        indexed(
            "b",
            json!({"name": [{"family": "Nguyen"}], "status": "off", "born": 1990}),
        ),
    )
    .await;
    let string = |v: &str| Condition::StringStarts {
        param: "family".into(),
        value: v.into(),
    };
    assert_eq!(found(&store, vec![vec![string("ng")]]).await, ["a", "b"]);
    // LIKE wildcards in a value are literal.
    assert_eq!(found(&store, vec![vec![string("ng_%")]]).await, ["a"]);
    assert_eq!(
        found(
            &store,
            vec![vec![Condition::StringContains {
                param: "family".into(),
                value: "uye".into()
            }]]
        )
        .await,
        ["b"]
    );
    assert_eq!(
        found(
            &store,
            vec![vec![Condition::StringExact {
                param: "family".into(),
                value: "Nguyen".into()
            }]]
        )
        .await,
        ["b"]
    );
    let token = |system: Option<Option<String>>, code: &str| Condition::Token {
        param: "status".into(),
        system,
        code: Some(code.into()),
    };
    assert_eq!(found(&store, vec![vec![token(None, "on")]]).await, ["a"]);
    assert_eq!(
        found(&store, vec![vec![token(Some(Some("urn:s".into())), "off")]]).await,
        ["b"]
    );
    assert!(found(&store, vec![vec![token(Some(None), "off")]])
        .await
        .is_empty());
    assert_eq!(
        found(
            &store,
            vec![vec![Condition::Not(Box::new(token(None, "on")))]]
        )
        .await,
        ["b"]
    );
    // OR within a filter, AND across filters.
    assert_eq!(
        found(&store, vec![vec![token(None, "on"), token(None, "off")]]).await,
        ["a", "b"]
    );
    assert_eq!(
        found(&store, vec![vec![token(None, "on")], vec![string("nguy")]]).await,
        Vec::<String>::new()
    );
    let date = |op, start, end| Condition::Date {
        param: "born".into(),
        op,
        start,
        end,
    };
    assert_eq!(
        found(&store, vec![vec![date(RangeOp::Within, 19800, 19810)]]).await,
        ["a"]
    );
    assert_eq!(
        found(&store, vec![vec![date(RangeOp::EndsAfter, 19850, 19860)]]).await,
        ["b"]
    );
    assert_eq!(
        found(&store, vec![vec![date(RangeOp::Overlaps, 19805, 19905)]]).await,
        ["a", "b"]
    );
    let number = Condition::Number {
        param: "score".into(),
        kind: IndexKind::Number,
        op: RangeOp::Within,
        low: 0.45,
        high: 0.55,
        system: None,
        code: None,
    };
    assert_eq!(found(&store, vec![vec![number]]).await, ["a"]);
    let reference = Condition::Reference {
        param: "org".into(),
        target_type: Some("Organization".into()),
        target_id: "o1".into(),
    };
    assert_eq!(found(&store, vec![vec![reference]]).await, ["a"]);
    let uri = |op, v: &str| Condition::Uri {
        param: "url".into(),
        op,
        value: v.into(),
    };
    assert_eq!(
        found(&store, vec![vec![uri(UriOp::Below, "http://x.org/")]]).await,
        ["a"]
    );
    assert_eq!(
        found(&store, vec![vec![uri(UriOp::Above, "http://x.org/a/b/c")]]).await,
        ["a"]
    );
    let missing = |m| Condition::Missing {
        param: "score".into(),
        kind: IndexKind::Number,
        missing: m,
    };
    assert_eq!(found(&store, vec![vec![missing(true)]]).await, ["b"]);
    assert_eq!(found(&store, vec![vec![missing(false)]]).await, ["a"]);

    // Beside a narrow filter (here the family prefix both share), broad
    // ones check each candidate's own rows: the same answers.
    let both = || vec![string("ng")];
    for (broad, expected) in [
        (vec![date(RangeOp::EndsAfter, 19850, 19860)], vec!["b"]),
        (
            vec![
                date(RangeOp::Within, 19800, 19810),
                date(RangeOp::Within, 19900, 19910),
            ],
            vec!["a", "b"],
        ),
        (vec![missing(true)], vec!["b"]),
        (vec![missing(false)], vec!["a"]),
        (vec![Condition::Not(Box::new(token(None, "on")))], vec!["b"]),
        (
            vec![Condition::StringContains {
                param: "family".into(),
                value: "uye".into(),
            }],
            vec!["b"],
        ),
    ] {
        let what = format!("{broad:?}");
        assert_eq!(found(&store, vec![both(), broad]).await, expected, "{what}");
    }

    // An update replaces the rows; a delete removes them.
    write(&store, indexed("a", json!({"name": [{"family": "Other"}]}))).await;
    assert_eq!(found(&store, vec![vec![string("ng")]]).await, ["b"]);
    assert_eq!(found(&store, vec![vec![string("oth")]]).await, ["a"]);
    write(&store, op("Patient", "a", WriteKind::Delete)).await;
    assert!(found(&store, vec![vec![string("oth")]]).await.is_empty());

    // Rows rebuilt from outside a write; the version they were built with.
    assert!(store
        .replace_index("Patient", "b", 1, Vec::new())
        .await
        .unwrap());
    assert!(found(&store, vec![vec![string("ng")]]).await.is_empty());
    // Rows built from a version that is no longer the live one are dropped:
    // the write that replaced it indexed its own.
    let stale = vec![IndexEntry::String {
        param: "family".into(),
        normalized: "stale".into(),
        exact: "Stale".into(),
    }];
    assert!(!store.replace_index("Patient", "b", 2, stale).await.unwrap());
    assert!(found(&store, vec![vec![string("stale")]]).await.is_empty());
    assert!(
        !store
            .replace_index("Patient", "a", 3, Vec::new())
            .await
            .unwrap(),
        "a deleted resource has no rows"
    );
    assert_eq!(store.index_version().await.unwrap(), None);
    store.set_index_version("v1").await.unwrap();
    store.set_index_version("v2").await.unwrap();
    assert_eq!(store.index_version().await.unwrap().as_deref(), Some("v2"));
    store
        .analyze()
        .await
        .expect("statistics refresh on both backends");
}

/// A prefix (string, token text, `uri:below`, `:above`) is an index range
/// compared by code point: case counts for uris, on both backends, and a
/// prefix that ends in a non-ASCII letter or in the last code point still
/// finds exactly its values.
async fn prefixes_match_by_code_point_on_both_backends(store: TestStore) {
    for (id, family, url) in [
        ("a", "ñu", "http://x.org/Case/b"),
        ("b", "nu", "http://x.org/case/b"),
        ("c", "o\u{10FFFF}z", "http://x.org/cas"),
        ("d", "oa", "http://x.org/casf"),
    ] {
        write(
            &store,
            indexed(id, json!({"name": [{"family": family}], "url": url})),
        )
        .await;
    }
    let string = |v: &str| {
        vec![vec![Condition::StringStarts {
            param: "family".into(),
            value: v.into(),
        }]]
    };
    assert_eq!(found(&store, string("ñ")).await, ["a"]);
    assert_eq!(found(&store, string("n")).await, ["b"]);
    assert_eq!(found(&store, string("o\u{10FFFF}")).await, ["c"]);
    assert_eq!(found(&store, string("o")).await, ["c", "d"]);
    assert_eq!(found(&store, string("")).await, ["a", "b", "c", "d"]);
    let uri = |op, v: &str| {
        vec![vec![Condition::Uri {
            param: "url".into(),
            op,
            value: v.into(),
        }]]
    };
    assert_eq!(
        found(&store, uri(UriOp::Below, "http://x.org/case")).await,
        ["b"]
    );
    assert_eq!(
        found(&store, uri(UriOp::Below, "http://x.org/cas")).await,
        ["b", "c", "d"]
    );
    assert_eq!(
        found(&store, uri(UriOp::Below, "HTTP://X.ORG/")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        found(&store, uri(UriOp::Above, "http://x.org/case/b/c")).await,
        ["b", "c"]
    );
    assert_eq!(
        found(&store, uri(UriOp::Above, "http://x.org/CAS")).await,
        Vec::<String>::new()
    );
}

/// A search whose equality filters decide by the index rows alone (one
/// type, no `_id` or `_lastUpdated`): the intersection of two such filters,
/// a broad filter beside them, the total across pages, cursor paging, and
/// neither a resource of another type with the same rows nor a deleted one.
async fn index_decided_searches_page_count_and_keep_to_their_type(store: TestStore) {
    for (id, family, status, born) in [
        ("a", "Ng", "on", 1980),
        ("b", "Nguyen", "on", 1990),
        ("c", "Ngo", "on", 2000),
        ("d", "Ngata", "off", 1990),
        ("e", "Ngu", "on", 1995),
    ] {
        write(
            &store,
            indexed(
                id,
                json!({"name": [{"family": family}], "status": status, "born": born}),
            ),
        )
        .await;
    }
    // An Observation with rows equal to a Patient's, and a deleted Patient.
    let mut other = indexed(
        "x",
        json!({"name": [{"family": "Ngx"}], "status": "on", "born": 1990}),
    );
    other.resource_type = "Observation".into();
    if let WriteKind::Put(body) = &mut other.kind {
        body["resourceType"] = json!("Observation");
    }
    write(&store, other).await;
    write(&store, op("Patient", "e", WriteKind::Delete)).await;

    let on = Condition::Token {
        param: "status".into(),
        system: None,
        code: Some("on".into()),
    };
    let ng = Condition::StringStarts {
        param: "family".into(),
        value: "ng".into(),
    };
    let born_after = Condition::Date {
        param: "born".into(),
        op: RangeOp::EndsAfter,
        start: 19850,
        end: 19860,
    };
    let query = |cursor: Option<Cursor>| SearchQuery {
        resource_type: Some("Patient".into()),
        count: 1,
        total: TotalMode::Accurate,
        cursor,
        filters: [&on, &ng, &born_after]
            .into_iter()
            .map(|c| Filter {
                any_of: vec![c.clone()],
            })
            .collect(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.search(query(cursor)).await.expect("the search runs");
        assert_eq!(page.total, Some(2), "the total counts every page's matches");
        seen.extend(page.resources.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(seen.len() <= 2, "paging ends: {seen:?}");
    }
    assert_eq!(seen, ["b", "c"]);
    // The same through `_type` with one type.
    let page = store
        .search(SearchQuery {
            resource_type: None,
            types: vec!["Observation".into()],
            ..query(None)
        })
        .await
        .unwrap();
    assert_eq!(ids(&page.resources), ["x"]);
    assert_eq!(page.total, Some(1));
    // With several types, the rows of each are listed; a type not named
    // is left out.
    for (types, expected) in [
        (vec!["Observation", "Patient"], vec!["b", "c", "x"]),
        (vec!["Observation", "Encounter"], vec!["x"]),
        (vec!["Encounter", "Patient"], vec!["b", "c"]),
    ] {
        let page = store
            .search(SearchQuery {
                resource_type: None,
                types: types.iter().map(|t| t.to_string()).collect(),
                count: 10,
                ..query(None)
            })
            .await
            .unwrap();
        assert_eq!(ids(&page.resources), expected, "{types:?}");
        assert_eq!(page.total, Some(expected.len() as i64), "{types:?}");
    }
}

/// Without a sort, results come in the order resources were first stored:
/// an update, or a delete and a re-creation, keeps a resource's place. A
/// search decided by index rows pages by that order forwards and back, with
/// its total on every page, even an empty one after a cursor; `_id` still
/// sorts by id.
async fn searches_come_in_creation_order_and_page_by_it(store: TestStore) {
    let status = |id: &str, status: &str| indexed(id, json!({"status": status}));
    for (id, s) in [
        ("m", "on"),
        ("b", "on"),
        ("q", "off"),
        ("x", "on"),
        ("a", "on"),
    ] {
        write(&store, status(id, s)).await;
    }
    write(&store, status("m", "on")).await;
    write(&store, op("Patient", "b", WriteKind::Delete)).await;
    write(&store, status("b", "on")).await;

    let every = store.search(patients(10)).await.unwrap();
    assert_eq!(ids(&every.resources), ["m", "b", "q", "x", "a"]);

    let on = |count: u32, cursor: Option<Cursor>| SearchQuery {
        count,
        cursor,
        total: TotalMode::Accurate,
        filters: vec![Filter {
            any_of: vec![Condition::Token {
                param: "status".into(),
                system: None,
                code: Some("on".into()),
            }],
        }],
        ..patients(count)
    };
    let first = store.search(on(2, None)).await.unwrap();
    assert_eq!(ids(&first.resources), ["m", "b"]);
    assert_eq!(first.total, Some(4));
    let second = store.search(on(2, first.next.clone())).await.unwrap();
    assert_eq!(ids(&second.resources), ["x", "a"]);
    assert_eq!(second.total, Some(4));
    assert!(second.next.is_none());
    let back = store.search(on(2, second.previous.clone())).await.unwrap();
    assert_eq!(ids(&back.resources), ["m", "b"]);
    assert_eq!(back.total, Some(4));
    let sorted = store
        .search(SearchQuery {
            sort: SortKey::Id,
            ..on(10, None)
        })
        .await
        .unwrap();
    assert_eq!(ids(&sorted.resources), ["a", "b", "m", "x"]);

    // What followed the first page is gone: the page is empty, the total
    // still counts what is left.
    write(&store, op("Patient", "x", WriteKind::Delete)).await;
    write(&store, op("Patient", "a", WriteKind::Delete)).await;
    let emptied = store.search(on(2, first.next)).await.unwrap();
    assert!(emptied.resources.is_empty());
    assert_eq!(emptied.total, Some(2));
}

/// `TotalMode::Bounded` counts exactly up to `BOUNDED_TOTAL` matches and
/// gives no total past it, on both ways a search is answered (by index
/// rows, by the resource table) and on history; `Accurate` counts all.
async fn bounded_totals_count_up_to_their_bound(store: TestStore) {
    let over = BOUNDED_TOTAL + 1;
    let ops: Vec<WriteOp> = (0..over)
        .map(|i| {
            let status = if i % 2 == 0 { "even" } else { "odd" };
            indexed(&format!("p{i}"), json!({"status": status}))
        })
        .collect();
    store.write_all(ops).await.expect("the patients are stored");
    let status = |code: &str| Filter {
        any_of: vec![Condition::Token {
            param: "status".into(),
            system: None,
            code: Some(code.into()),
        }],
    };
    let total = |filters: Vec<Filter>, total: TotalMode, cursor: Option<Cursor>| {
        let store = &store;
        async move {
            store
                .search(SearchQuery {
                    filters,
                    total,
                    cursor,
                    ..patients(10)
                })
                .await
                .expect("the search runs")
        }
    };
    // By the resource table: every Patient.
    let all = total(vec![], TotalMode::Bounded, None).await;
    assert_eq!(all.resources.len(), 10);
    assert_eq!(all.total, None, "{over} matches are past the bound");
    assert!(all.next.is_some(), "the next link still says there is more");
    assert_eq!(
        total(vec![], TotalMode::Accurate, None).await.total,
        Some(over)
    );
    let later = total(vec![], TotalMode::Bounded, all.next.clone()).await;
    assert_eq!(later.total, None, "a later page is bounded too");
    assert_eq!(
        total(vec![], TotalMode::Accurate, all.next).await.total,
        Some(over)
    );
    // By index rows: 501 even and 500 odd statuses are within the bound.
    let even = total(vec![status("even")], TotalMode::Bounded, None).await;
    assert_eq!(even.total, Some(over / 2 + 1));
    let odd = total(vec![status("odd")], TotalMode::Bounded, None).await;
    assert_eq!(odd.total, Some(over / 2));
    let later = total(vec![status("odd")], TotalMode::Bounded, odd.next).await;
    assert_eq!(later.total, Some(over / 2), "a later page counts the same");
    let either = Filter {
        any_of: [status("even"), status("odd")]
            .into_iter()
            .flat_map(|f| f.any_of)
            .collect(),
    };
    let both = total(vec![either.clone()], TotalMode::Bounded, None).await;
    assert_eq!(both.total, None);
    let both = total(vec![either], TotalMode::Accurate, both.next).await;
    assert_eq!(both.total, Some(over));
    assert_eq!(
        total(vec![], TotalMode::None, None).await.total,
        None,
        "no count at all"
    );

    // History: a type history past the bound has no total; an instance
    // history whose first page holds it is its own count.
    let history = |scope: HistoryScope| {
        let store = &store;
        async move {
            store
                .history(HistoryQuery {
                    scope,
                    since: None,
                    count: 10,
                    cursor: None,
                })
                .await
                .expect("the history is read")
        }
    };
    let of_type = history(HistoryScope::Type {
        resource_type: "Patient".into(),
    })
    .await;
    assert_eq!(of_type.entries.len(), 10);
    assert_eq!(of_type.total, None);
    write(&store, indexed("p7", json!({"status": "seven"}))).await;
    let one = history(HistoryScope::Instance {
        resource_type: "Patient".into(),
        id: "p7".into(),
    })
    .await;
    assert_eq!(one.total, Some(2));
    assert_eq!(one.entries.len(), 2);
}

/// `sort_by`: several keys of every value kind, either direction, a
/// resource without a value after every resource with one, ties in
/// creation order; paging forwards with `next` and back with `previous`
/// visits exactly the order a plain sort gives, on both ways a search is
/// answered (with and without a narrowing filter).
async fn sorts_by_parameters_keep_missing_last_and_page_both_ways(store: TestStore) {
    // (id, status, born, score), stored in this order.
    type Row = (&'static str, Option<&'static str>, Option<i64>, Option<f64>);
    let rows: [Row; 8] = [
        ("a", Some("on"), Some(1990), Some(1.0)),
        ("b", Some("off"), Some(1980), Some(3.0)),
        ("c", Some("on"), None, Some(2.0)),
        ("d", None, Some(1990), None),
        ("e", Some("off"), Some(1990), Some(1.0)),
        ("f", Some("on"), Some(1970), None),
        ("g", None, None, None),
        ("h", Some("on"), Some(1990), Some(-4.5)),
    ];
    for (id, status, born, score) in rows {
        let mut body = json!({});
        if let Some(s) = status {
            body["status"] = json!(s);
        }
        if let Some(b) = born {
            body["born"] = json!(b);
        }
        if let Some(n) = score {
            body["score"] = json!(n);
        }
        write(&store, indexed(id, body)).await;
    }
    let field = |code: &str| {
        let (descending, code) = match code.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, code),
        };
        let by = match code {
            "_id" => SortBy::Id,
            "status" => SortBy::Param {
                param: code.into(),
                kind: IndexKind::Token,
            },
            "born" => SortBy::Param {
                param: code.into(),
                kind: IndexKind::Date,
            },
            "score" => SortBy::Param {
                param: code.into(),
                kind: IndexKind::Number,
            },
            other => panic!("{other}"),
        };
        SortField { by, descending }
    };
    // The order a sort gives, computed here from the rows.
    let expected = |keys: &[&str], only_on: bool| -> Vec<&str> {
        let mut listed: Vec<(usize, &Row)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !only_on || r.1 == Some("on"))
            .collect();
        listed.sort_by(|(ia, a), (ib, b)| {
            for key in keys {
                let f = field(key);
                let ord = match &f.by {
                    SortBy::Id => Some(a.0.cmp(b.0)),
                    SortBy::Param { param, .. } => match param.as_str() {
                        "status" => match (a.1, b.1) {
                            (Some(x), Some(y)) => Some(x.cmp(y)),
                            (x, y) => {
                                let o = x.is_none().cmp(&y.is_none());
                                if o.is_ne() {
                                    return o;
                                }
                                None
                            }
                        },
                        "born" => match (a.2, b.2) {
                            (Some(x), Some(y)) => Some(x.cmp(&y)),
                            (x, y) => {
                                let o = x.is_none().cmp(&y.is_none());
                                if o.is_ne() {
                                    return o;
                                }
                                None
                            }
                        },
                        _ => match (a.3, b.3) {
                            (Some(x), Some(y)) => Some(x.partial_cmp(&y).unwrap()),
                            (x, y) => {
                                let o = x.is_none().cmp(&y.is_none());
                                if o.is_ne() {
                                    return o;
                                }
                                None
                            }
                        },
                    },
                    SortBy::LastUpdated => unreachable!(),
                };
                if let Some(o) = ord {
                    let o = if f.descending { o.reverse() } else { o };
                    if o.is_ne() {
                        return o;
                    }
                }
            }
            ia.cmp(ib)
        });
        listed.into_iter().map(|(_, r)| r.0).collect()
    };
    let on = Filter {
        any_of: vec![Condition::Token {
            param: "status".into(),
            system: None,
            code: Some("on".into()),
        }],
    };
    for keys in [
        &["status"][..],
        &["-status"],
        &["born"],
        &["-born"],
        &["score"],
        &["-score"],
        &["status", "-born"],
        &["-score", "status"],
        &["status", "born", "-score"],
        &["-status", "-_id"],
    ] {
        for only_on in [false, true] {
            let query = |count: u32, cursor: Option<Cursor>| SearchQuery {
                sort_by: keys.iter().map(|k| field(k)).collect(),
                filters: if only_on { vec![on.clone()] } else { vec![] },
                total: TotalMode::Accurate,
                cursor,
                ..patients(count)
            };
            let want = expected(keys, only_on);
            let whole = store.search(query(20, None)).await.unwrap();
            assert_eq!(ids(&whole.resources), want, "{keys:?} on={only_on}");
            assert_eq!(whole.total, Some(want.len() as i64));
            // Forwards two at a time, then back from the last page.
            let mut seen = Vec::new();
            let mut pages = Vec::new();
            let mut cursor = None;
            loop {
                let page = store.search(query(2, cursor)).await.unwrap();
                assert_eq!(page.total, Some(want.len() as i64), "{keys:?}");
                seen.extend(ids(&page.resources).into_iter().map(str::to_owned));
                cursor = page.next.clone();
                pages.push(page);
                if cursor.is_none() {
                    break;
                }
                assert!(pages.len() <= 5, "{keys:?}: paging does not end");
            }
            assert_eq!(seen, want, "{keys:?} on={only_on}: forwards");
            let mut back = Vec::new();
            let mut cursor = pages.last().unwrap().previous.clone();
            while let Some(c) = cursor {
                let page = store.search(query(2, Some(c))).await.unwrap();
                back.splice(0..0, ids(&page.resources).into_iter().map(str::to_owned));
                cursor = page.previous.clone();
            }
            let last = ids(&pages.last().unwrap().resources).len();
            assert_eq!(
                back,
                want[..want.len() - last],
                "{keys:?} on={only_on}: backwards"
            );
        }
    }
    // A cursor issued for one sort does not continue another.
    let first = store
        .search(SearchQuery {
            sort_by: vec![field("status")],
            ..patients(2)
        })
        .await
        .unwrap();
    let other = store
        .search(SearchQuery {
            sort_by: vec![field("-status")],
            cursor: first.next,
            ..patients(2)
        })
        .await;
    assert!(matches!(other, Err(StoreError::InvalidCursor)), "{other:?}");
}

/// A resource's index rows go out in statements written for a power-of-two
/// number of rows and at most 256 at a time: every row of 1, 3, 64, 65 and
/// 300 is found (first, middle, last, a row without a system), and an
/// update replaces them all.
async fn index_rows_of_any_number_are_written_whole(store: TestStore) {
    let many: Indexer = Arc::new(|_, body: &Value| {
        let n = body["n"].as_u64().unwrap_or_default();
        let tag = body["tag"].as_str().unwrap_or_default().to_owned();
        (0..n)
            .map(|i| IndexEntry::Token {
                param: "many".into(),
                system: (i % 2 == 0).then(|| "urn:s".to_owned()),
                code: Some(format!("{tag}-{i}")),
                text: None,
            })
            .collect()
    });
    let put = |id: &str, n: u64, tag: &str| WriteOp {
        index: Some(many.clone()),
        ..op(
            "Patient",
            id,
            WriteKind::Put(json!({"resourceType": "Patient", "id": id, "n": n, "tag": tag})),
        )
    };
    let code = |c: String| {
        vec![Condition::Token {
            param: "many".into(),
            system: None,
            code: Some(c),
        }]
    };
    for n in [1u64, 3, 64, 65, 300] {
        let id = format!("n{n}");
        write(&store, put(&id, n, &id)).await;
        for i in [0, n / 2, n - 1] {
            assert_eq!(
                found(&store, vec![code(format!("{id}-{i}"))]).await,
                vec![id.clone()],
                "row {i} of {n}"
            );
        }
    }
    write(&store, put("n300", 2, "again")).await;
    assert!(
        found(&store, vec![code("n300-299".into())])
            .await
            .is_empty(),
        "old rows are gone"
    );
    assert_eq!(
        found(&store, vec![code("again-1".into())]).await,
        vec!["n300".to_owned()]
    );
}

/// A notifier that queues one event for destination `d` per change of a
/// Patient, naming what the change did and, for an update, whether the
/// family name changed.
fn patient_notifier() -> Notify {
    Arc::new(|change: &Change<'_>| {
        if change.resource_type != "Patient" {
            return Vec::new();
        }
        let interaction = match (change.previous, change.current) {
            (None, Some(_)) => "create",
            (Some(_), Some(_)) => "update",
            _ => "delete",
        };
        vec![OutboxEvent {
            destination: "d".into(),
            destination_version: 3,
            topic: "http://t".into(),
            interaction,
            durable: true,
        }]
    })
}

async fn notifications_are_queued_with_the_change_and_taken_in_order(store: TestStore) {
    let notified = |op: WriteOp| WriteOp {
        notify: Some(patient_notifier()),
        ..op
    };
    write(&store, notified(put("Patient", "a", "One"))).await;
    write(&store, notified(put("Patient", "a", "Two"))).await;
    write(&store, notified(op("Patient", "a", WriteKind::Delete))).await;
    write(&store, notified(put("Observation", "o", "x"))).await;
    // A refused write set queues nothing: its events go with its changes.
    let refused = store
        .write_all(vec![
            notified(put("Patient", "b", "B")),
            notified(if_match(7, put("Patient", "c", "C"))),
        ])
        .await;
    assert!(refused.is_err());
    assert_eq!(store.count_events("d").await.unwrap(), 3);
    assert_eq!(store.count_events("other").await.unwrap(), 0);

    let mut lease = store.lease("d").await.unwrap().unwrap();
    let rows = lease.next(2).await.unwrap();
    let taken: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.interaction.clone(), r.version_id))
        .collect();
    assert_eq!(taken, [("create".to_owned(), 1), ("update".to_owned(), 2)]);
    assert!(rows[0].seq < rows[1].seq);
    assert_eq!(rows[0].resource_type, "Patient");
    assert_eq!(rows[0].resource_id, "a");
    assert_eq!(rows[0].topic, "http://t");
    assert_eq!(rows[0].destination_version, 3);
    // While one worker holds the destination, another is told so (the
    // PostgreSQL lease; an SQLite database has one process).
    if matches!(&*store, Store::Postgres(_)) {
        assert!(store.lease("d").await.unwrap().is_none());
        assert!(store.lease("other").await.unwrap().is_some());
    }
    // Only what was acknowledged goes.
    lease.acknowledge(&[rows[0].seq]).await.unwrap();
    let left: Vec<String> = lease
        .next(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.interaction)
        .collect();
    assert_eq!(left, ["update", "delete"]);
    lease.release().await;
    // Released, the lease can be taken again; dropped, it ends too.
    let dropped = store.lease("d").await.unwrap().unwrap();
    drop(dropped);
    let found =
        fhirbox_test_support::wait_until_async(std::time::Duration::from_secs(5), || async {
            store.lease("d").await.unwrap().is_some()
        })
        .await;
    assert!(found);
    assert_eq!(store.count_events("d").await.unwrap(), 2);
    assert_eq!(store.queued_destinations().await.unwrap(), ["d"]);
    // Only what was queued for versions before the given one goes.
    assert_eq!(store.drop_events("d", 3).await.unwrap(), 0);
    assert_eq!(store.drop_events("d", 4).await.unwrap(), 2);
    assert!(store.queued_destinations().await.unwrap().is_empty());
}
