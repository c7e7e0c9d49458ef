//! The notification a destination receives (Aidbox's shape,
//! docs/subscriptions.md): a `Bundle` of type `history` whose first entry is
//! an `AidboxSubscriptionStatus` (`type` `event-notification`, one
//! `notificationEvent` per change, the topic and the destination), then one
//! entry per change as the destination's `content` says: the resource as
//! that change stored it (`full-resource`), its URL only (`id-only`), or
//! nothing (`empty`).

use fhirbox_store::instant::{format_micros, now_micros};
use fhirbox_store::{OutboxRow, ResourceRead, Store, StoreError};
use serde_json::{json, Map, Value};

use crate::destination::Content;
use crate::registry::Live;

/// The stored text of a version this instance wrote lately, if it still
/// has it (`None`: read it from the store).
pub type Written<'a> = &'a (dyn Fn(&OutboxRow) -> Option<std::sync::Arc<str>> + Sync);

/// The notification of `rows` (oldest first, of one topic) for `live`.
/// `base` is the server's public base URL (`BOX_WEB_BASE_URL`), for
/// `fullUrl`.
pub async fn bundle(
    store: &Store,
    live: &Live,
    rows: &[OutboxRow],
    base: Option<&str>,
    written: Written<'_>,
) -> Result<Value, StoreError> {
    let events: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "eventNumber": row.seq,
                "timestamp": format_micros(row.created_at),
                "focus": {"reference": format!("{}/{}", row.resource_type, row.resource_id)},
            })
        })
        .collect();
    let mut entries = vec![json!({"resource": {
        "resourceType": "AidboxSubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "notificationEvent": events,
        "topic": rows.first().map_or(live.destination.topic.as_str(), |r| r.topic.as_str()),
        "topic-destination": {"reference": format!("AidboxTopicDestination/{}", live.id)},
    }})];
    if live.destination.content != Content::Empty {
        for row in rows {
            entries.push(entry(store, live.destination.content, row, base, written).await?);
        }
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": format_micros(now_micros()),
        "entry": entries,
    }))
}

async fn entry(
    store: &Store,
    content: Content,
    row: &OutboxRow,
    base: Option<&str>,
    written: Written<'_>,
) -> Result<Value, StoreError> {
    let url = format!("{}/{}", row.resource_type, row.resource_id);
    let mut entry = Map::new();
    if let Some(base) = base {
        entry.insert(
            "fullUrl".into(),
            json!(format!("{}/{url}", base.trim_end_matches('/'))),
        );
    }
    let method = match row.interaction.as_str() {
        "create" => "POST",
        "delete" => "DELETE",
        _ => "PUT",
    };
    if content == Content::FullResource && row.interaction != "delete" {
        // The version the change stored, whatever came after it: as this
        // instance wrote it, or read back.
        let text = match written(row) {
            Some(text) => Some(text),
            None => store
                .vread(&row.resource_type, &row.resource_id, row.version_id)
                .await?
                .filter(|s| !s.deleted)
                .map(|s| std::sync::Arc::from(s.body)),
        };
        if let Some(body) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            entry.insert("resource".into(), body);
        }
    }
    entry.insert(
        "request".into(),
        json!({"method": method, "url": if method == "POST" { row.resource_type.clone() } else { url }}),
    );
    Ok(Value::Object(entry))
}
