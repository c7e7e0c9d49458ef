//! `fhirbox validate-store`: checks every stored resource (current
//! versions) against the structure its type defines and reports those that
//! fail, by type and id — for data written before validation existed, or
//! under `BOX_VALIDATION=off`. It reads only; nothing is changed or removed
//! (docs/validation.md, "Data stored before").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fhirbox_store::{ResourceSearch, SearchQuery, SortKey, Store};
use fhirbox_validation::{UnknownElements, Validator};
use serde_json::Value;

use crate::settings::{Settings, Validation};

/// Resources read per page.
const PAGE: u32 = 500;
/// Problems printed per failing resource.
const SHOWN: usize = 3;

/// What a run found.
#[derive(Debug, Default)]
pub struct StoreReport {
    pub checked: u64,
    /// type -> ids that fail, in the order the resources were first stored.
    pub failing: BTreeMap<String, Vec<String>>,
    /// The text printed: one block per failing resource, then a summary.
    pub text: String,
}

impl StoreReport {
    pub fn failed(&self) -> usize {
        self.failing.values().map(Vec::len).sum()
    }
}

/// Validates every current resource in `store`.
pub async fn validate_store(
    store: &Store,
    validator: &Validator,
) -> Result<StoreReport, fhirbox_store::StoreError> {
    let mut report = StoreReport::default();
    let mut cursor = None;
    loop {
        let page = store
            .search(SearchQuery {
                resource_type: None,
                sort: SortKey::Created,
                count: PAGE,
                cursor,
                ..Default::default()
            })
            .await?;
        for stored in &page.resources {
            report.checked += 1;
            let problems: Vec<String> = match serde_json::from_str::<Value>(&stored.body) {
                Err(e) => vec![format!("the stored body is not JSON: {e}")],
                Ok(body) => match validator.validate(&stored.resource_type, &body) {
                    Ok(()) => continue,
                    Err(problems) => {
                        let total = problems.listed.len() + problems.more;
                        let mut lines: Vec<String> = problems
                            .listed
                            .iter()
                            .take(SHOWN)
                            .map(|p| format!("{}: {}", p.expression, p.message))
                            .collect();
                        if total > SHOWN {
                            lines.push(format!("… and {} more", total - SHOWN));
                        }
                        lines
                    }
                },
            };
            let _ = writeln!(report.text, "{}/{}", stored.resource_type, stored.id);
            for line in problems {
                let _ = writeln!(report.text, "  {line}");
            }
            report
                .failing
                .entry(stored.resource_type.clone())
                .or_default()
                .push(stored.id.clone());
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let by_type: Vec<String> = report
        .failing
        .iter()
        .map(|(t, ids)| format!("{t}: {}", ids.len()))
        .collect();
    let _ = writeln!(
        report.text,
        "checked {} resources; {} do not have the structure FHIR R4 defines{}",
        report.checked,
        report.failed(),
        if by_type.is_empty() {
            String::new()
        } else {
            format!(" ({})", by_type.join(", "))
        }
    );
    Ok(report)
}

/// The command: 0 when every resource passes, 1 when some fail, 2 when the
/// store or the schema cannot be opened. Unknown elements are reported
/// unless `BOX_VALIDATION=allow-unknown-elements`.
pub async fn validate_store_command(settings: &Settings) -> (i32, String) {
    let unknown = match settings.validation {
        Validation::AllowUnknownElements => UnknownElements::Allow,
        Validation::Strict | Validation::Off => UnknownElements::Refuse,
    };
    let validator = match Validator::shared(unknown) {
        Ok(v) => v,
        Err(e) => return (2, format!("fhirbox validate-store: {e}\n")),
    };
    let store = match Store::open(settings.database.expose()).await {
        Ok(store) => store,
        Err(e) => {
            return (
                2,
                format!(
                    "fhirbox validate-store: cannot open the database {}: {e}\n",
                    settings.database.masked()
                ),
            )
        }
    };
    let result = validate_store(&store, &validator).await;
    store.close().await;
    match result {
        Ok(report) if report.failed() == 0 => (0, report.text),
        Ok(report) => (1, report.text),
        Err(e) => (2, format!("fhirbox validate-store: reading failed: {e}\n")),
    }
}
