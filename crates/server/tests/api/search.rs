//! Search: _id, _lastUpdated, _sort, _count, _total, paging, strict handling.

use std::collections::HashSet;
use std::time::Duration;

use fhirbox_test_support::wait_until_async;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{entry_ids, link, TestApp};

backend_tests!(
    search_by_id_returns_matches_and_excludes_deleted,
    last_updated_prefixes_select_time_ranges,
    sort_orders_by_id_or_last_updated_in_both_directions,
    sort_by_search_parameters_pages_in_order_with_missing_last,
    totals_are_bounded_by_default_and_can_be_asked_for_or_off,
    pages_link_next_and_previous,
    paging_stays_correct_while_rows_are_inserted,
    unknown_parameters_are_ignored_or_refused_when_strict,
    system_search_spans_types
);

async fn search_by_id_returns_matches_and_excludes_deleted(app: TestApp) {
    for id in ["a", "b", "c"] {
        app.put_patient(id, id).await;
    }
    app.delete("/fhir/Patient/c").await;
    let r = app.get("/fhir/Patient?_id=a,c").await;
    assert_eq!(r.status, 200);
    let bundle = r.json();
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1);
    assert_eq!(entry_ids(&bundle), ["a"]);
    assert_eq!(bundle["entry"][0]["search"]["mode"], "match");
    assert!(bundle["entry"][0]["fullUrl"]
        .as_str()
        .unwrap()
        .ends_with("/fhir/Patient/a"));
    let all = app.get("/fhir/Patient").await.json();
    assert_eq!(entry_ids(&all), ["a", "b"]);
    let none = app.get("/fhir/Patient?_id=zzz").await.json();
    assert_eq!(none["total"], 0);
    assert!(none.get("entry").is_none());
}

async fn last_updated_prefixes_select_time_ranges(app: TestApp) {
    app.put_patient("early", "E").await;
    let early_time = app.get("/fhir/Patient/early").await.json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    // Wait until the clock has moved past the first write's millisecond.
    let advanced = wait_until_async(Duration::from_secs(5), || async {
        app.put_patient("late", "L").await;
        let late = app.get("/fhir/Patient/late").await.json();
        late["meta"]["lastUpdated"].as_str().unwrap() > early_time.as_str()
    })
    .await;
    assert!(advanced, "clock did not advance");
    let q = |prefix: &str| {
        format!(
            "/fhir/Patient?_lastUpdated={prefix}{}&_sort=_id",
            early_time.replace('+', "%2B")
        )
    };
    assert_eq!(entry_ids(&app.get(&q("eq")).await.json()), ["early"]);
    assert_eq!(entry_ids(&app.get(&q("gt")).await.json()), ["late"]);
    assert_eq!(
        entry_ids(&app.get(&q("ge")).await.json()),
        ["early", "late"]
    );
    assert!(entry_ids(&app.get(&q("lt")).await.json()).is_empty());
    assert_eq!(entry_ids(&app.get(&q("le")).await.json()), ["early"]);
    let year = &early_time[..4];
    assert_eq!(
        entry_ids(
            &app.get(&format!("/fhir/Patient?_lastUpdated={year}"))
                .await
                .json()
        )
        .len(),
        2
    );
    app.get("/fhir/Patient?_lastUpdated=ne2024")
        .await
        .assert_outcome(400, "prefix");
    app.get("/fhir/Patient?_lastUpdated=soon")
        .await
        .assert_outcome(400, "not a FHIR dateTime");
}

async fn sort_orders_by_id_or_last_updated_in_both_directions(app: TestApp) {
    for id in ["m", "z", "a"] {
        app.put_patient(id, id).await;
    }
    assert_eq!(
        entry_ids(&app.get("/fhir/Patient?_sort=_id").await.json()),
        ["a", "m", "z"]
    );
    assert_eq!(
        entry_ids(&app.get("/fhir/Patient?_sort=-_id").await.json()),
        ["z", "m", "a"]
    );
    assert_eq!(
        entry_ids(&app.get("/fhir/Patient?_sort=_lastUpdated").await.json()),
        ["m", "z", "a"]
    );
    assert_eq!(
        entry_ids(&app.get("/fhir/Patient?_sort=-_lastUpdated").await.json()),
        ["a", "z", "m"]
    );
    app.get("/fhir/Patient?_sort=nosuch")
        .await
        .assert_outcome(400, "Patient has no search parameter \"nosuch\"");
}

/// `_sort` by search parameters (R4 §3.1.1.5.1): strings, dates, tokens,
/// quantities and references, several keys, missing last, and paging
/// through `next` links in that order.
async fn sort_by_search_parameters_pages_in_order_with_missing_last(app: TestApp) {
    // (id, family, birthDate, gender)
    let people = [
        ("p1", Some("Émile"), Some("1990-05-01"), Some("male")),
        ("p2", Some("adams"), Some("1980"), Some("female")),
        ("p3", None, Some("1990-05-01"), Some("female")),
        ("p4", Some("Baker"), None, None),
        ("p5", Some("ADAMS"), Some("2001-01"), Some("male")),
    ];
    for (id, family, born, gender) in people {
        let mut p = json!({"resourceType": "Patient", "id": id});
        if let Some(f) = family {
            p["name"] = json!([{"family": f}]);
        }
        if let Some(b) = born {
            p["birthDate"] = json!(b);
        }
        if let Some(g) = gender {
            p["gender"] = json!(g);
        }
        let r = app.put(&format!("/fhir/Patient/{id}"), &p).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    for (sort, want) in [
        // Case and accents fold; ties keep creation order; missing last.
        ("family", vec!["p2", "p5", "p4", "p1", "p3"]),
        ("-family", vec!["p1", "p4", "p2", "p5", "p3"]),
        ("birthdate", vec!["p2", "p1", "p3", "p5", "p4"]),
        ("-birthdate", vec!["p5", "p1", "p3", "p2", "p4"]),
        ("gender,-birthdate", vec!["p3", "p2", "p5", "p1", "p4"]),
        ("-gender,family", vec!["p5", "p1", "p2", "p3", "p4"]),
        ("family,_id", vec!["p2", "p5", "p4", "p1", "p3"]),
    ] {
        let whole = app.get(&format!("/fhir/Patient?_sort={sort}")).await;
        assert_eq!(whole.status, 200, "{}", whole.text);
        assert_eq!(entry_ids(&whole.json()), want, "_sort={sort}");
        let mut seen = Vec::new();
        let mut next = Some(format!("/fhir/Patient?_sort={sort}&_count=2"));
        while let Some(path) = next {
            let page = app.get(&path).await.json();
            assert_eq!(page["total"], 5, "{page}");
            seen.extend(entry_ids(&page));
            next = link(&page, "next");
            assert!(seen.len() <= 5, "_sort={sort}: paging does not end");
        }
        assert_eq!(seen, want, "_sort={sort} through next links");
    }
    // Quantities and references, on Observations.
    for (id, value, subject) in [
        ("o1", 70.5, "Patient/p2"),
        ("o2", 5.0, "Patient/p1"),
        ("o3", 12.0, "Patient/p3"),
    ] {
        let r = app
            .put(
                &format!("/fhir/Observation/{id}"),
                &json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "w"},
                        "valueQuantity": {"value": value, "unit": "kg"}, "subject": {"reference": subject}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert_eq!(
        entry_ids(
            &app.get("/fhir/Observation?_sort=-value-quantity")
                .await
                .json()
        ),
        ["o1", "o3", "o2"]
    );
    assert_eq!(
        entry_ids(
            &app.get("/fhir/Observation?_sort=subject&status=final")
                .await
                .json()
        ),
        ["o2", "o1", "o3"]
    );
    for (sort, needle) in [
        (
            "code-value-quantity",
            "composite parameter, which has no order",
        ),
        ("family,family", "family is given twice"),
        ("a,b,c,d,e", "at most 4 keys"),
        ("family,", "a sort key is empty"),
    ] {
        let path = if sort.starts_with("code") {
            "Observation"
        } else {
            "Patient"
        };
        app.get(&format!("/fhir/{path}?_sort={sort}"))
            .await
            .assert_outcome(400, needle);
    }
    app.get("/fhir?_sort=family")
        .await
        .assert_outcome(400, "needs a search of one resource type");
}

async fn totals_are_bounded_by_default_and_can_be_asked_for_or_off(app: TestApp) {
    // One more Patient than the default count reads; three named Few.
    let bound = fhirbox_store::BOUNDED_TOTAL;
    let entries: Vec<_> = (0..=bound)
        .map(|i| {
            let family = if i < 3 { "Few" } else { "Many" };
            json!({
                "resource": {"resourceType": "Patient", "name": [{"family": family}]},
                "request": {"method": "POST", "url": "Patient"}
            })
        })
        .collect();
    let loaded = app
        .post(
            "/fhir",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": entries}),
        )
        .await;
    assert_eq!(loaded.status, 200, "{}", loaded.text);
    let broad = app.get("/fhir/Patient?_count=5").await.json();
    assert!(
        broad.get("total").is_none(),
        "past the bound the default gives no total: {broad}"
    );
    assert!(link(&broad, "next").is_some());
    let later = app.get(&link(&broad, "next").unwrap()).await.json();
    assert!(later.get("total").is_none(), "{later}");
    for asked in ["_count=0", "_count=5&_total=accurate", "_total=estimate"] {
        assert_eq!(
            app.get(&format!("/fhir/Patient?{asked}")).await.json()["total"],
            bound + 1,
            "{asked}"
        );
    }
    assert_eq!(
        app.get("/fhir/Patient?name=few&_count=2").await.json()["total"],
        3,
        "a search within the bound is counted exactly"
    );
    let history = app.get("/fhir/Patient/_history?_count=5").await.json();
    assert!(history.get("total").is_none(), "{history}");
    assert!(link(&history, "next").is_some());

    app.put_patient("t", "T").await;
    assert_eq!(app.get("/fhir/Patient/t/_history").await.json()["total"], 1);
    assert_eq!(
        app.get("/fhir/Patient?_id=t&_total=accurate").await.json()["total"],
        1
    );
    assert!(app
        .get("/fhir/Patient?_total=none")
        .await
        .json()
        .get("total")
        .is_none());
    app.get("/fhir/Patient?_total=maybe")
        .await
        .assert_outcome(400, "_total=maybe");
}

async fn pages_link_next_and_previous(app: TestApp) {
    for i in 0..7 {
        app.put_patient(&format!("p{i}"), "Page").await;
    }
    let first = app.get("/fhir/Patient?_count=3").await.json();
    assert_eq!(entry_ids(&first), ["p0", "p1", "p2"]);
    assert_eq!(first["total"], 7);
    assert!(link(&first, "previous").is_none());
    assert!(link(&first, "self").unwrap().contains("_count=3"));
    let second = app.get(&link(&first, "next").unwrap()).await.json();
    assert_eq!(entry_ids(&second), ["p3", "p4", "p5"]);
    let third = app.get(&link(&second, "next").unwrap()).await.json();
    assert_eq!(entry_ids(&third), ["p6"]);
    assert!(link(&third, "next").is_none());
    let back = app.get(&link(&third, "previous").unwrap()).await.json();
    assert_eq!(entry_ids(&back), ["p3", "p4", "p5"]);
    let front = app.get(&link(&back, "previous").unwrap()).await.json();
    assert_eq!(entry_ids(&front), ["p0", "p1", "p2"]);
    assert!(link(&front, "previous").is_none());
    app.get("/fhir/Patient?_cursor=garbage")
        .await
        .assert_outcome(400, "_cursor");
}

async fn paging_stays_correct_while_rows_are_inserted(app: TestApp) {
    for i in 0..10 {
        app.put_patient(&format!("k{i:02}"), "Orig").await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/fhir/Patient?_count=3&_sort=_id".to_owned());
    let mut round = 0;
    while let Some(url) = next {
        let page = app.get(&url).await.json();
        seen.extend(entry_ids(&page));
        // Insert rows both before and after the cursor position between pages.
        app.put_patient(&format!("a-new{round}"), "New").await;
        app.put_patient(&format!("z-new{round}"), "New").await;
        round += 1;
        next = link(&page, "next");
        assert!(round < 20, "paging did not terminate");
    }
    let originals: Vec<_> = seen
        .iter()
        .filter(|id| id.starts_with('k'))
        .cloned()
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("k{i:02}")).collect();
    assert_eq!(
        originals, expected,
        "every original row exactly once, in order"
    );
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no row twice");
    assert!(
        !seen.iter().any(|id| id.starts_with("a-new")),
        "rows inserted before the cursor are not revisited"
    );
}

async fn unknown_parameters_are_ignored_or_refused_when_strict(app: TestApp) {
    app.put_patient("u", "U").await;
    let lenient = app.get("/fhir/Patient?nickname=U&_count=5").await;
    assert_eq!(lenient.status, 200);
    let self_link = link(&lenient.json(), "self").unwrap();
    assert!(
        !self_link.contains("nickname"),
        "ignored parameters are left out of the self link: {self_link}"
    );
    let outcome = lenient.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .cloned()
        .expect("an OperationOutcome entry says what was ignored");
    assert_eq!(outcome["resource"]["issue"][0]["severity"], "warning");
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nickname"));
    assert_eq!(
        lenient.json()["total"],
        1,
        "the outcome entry is not counted"
    );
    let strict = app
        .send(
            app.client
                .get(app.url("/fhir/Patient?nickname=U"))
                .header("prefer", "handling=strict"),
        )
        .await;
    strict.assert_outcome(400, "\"nickname\" is not supported");
}

async fn system_search_spans_types(app: TestApp) {
    app.put_patient("s1", "S").await;
    app.put(
        "/fhir/Observation/s1",
        &json!({"resourceType": "Observation", "id": "s1", "status": "final", "code": {"text": "pulse"}}),
    )
    .await;
    let bundle = app.get("/fhir?_id=s1").await.json();
    assert_eq!(bundle["total"], 2);
    let mut types: Vec<_> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect();
    types.sort();
    assert_eq!(types, ["Observation", "Patient"]);
}
