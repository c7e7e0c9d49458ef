//! The topics and destinations in force, loaded from the store and kept in
//! step with it (like the authenticator's snapshot: reloaded after a write
//! of either type on this instance, and by a periodic re-check for writes
//! through other instances), and the notifier every write carries: it says,
//! inside the write's transaction, which destinations a change notifies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fhirbox_store::{
    Change, ChangeWatch, HistoryQuery, HistoryScope, Notify, OutboxEvent, Reload, ResourceHistory,
    Store, StoreError,
};
use serde_json::Value;

use crate::destination::{Destination, Kind};
use crate::topic::{Interaction, Topic};

/// The resource types whose changes reload the registry.
pub const TYPES: &[&str] = &["AidboxSubscriptionTopic", "AidboxTopicDestination"];

/// A destination in force.
#[derive(Debug)]
pub struct Live {
    pub id: String,
    pub version: i64,
    /// The first version since the destination was last deleted (1 if it
    /// never was): notifications queued for earlier versions were for a
    /// destination that no longer exists, and are never sent.
    pub since: i64,
    pub destination: Destination,
    /// The stored body (its parameters are read at delivery).
    pub body: Value,
}

/// Which destinations a change of a resource type may notify.
struct Route {
    destination: Arc<Live>,
    topic: Arc<Topic>,
}

#[derive(Default)]
struct Snapshot {
    /// Every stored destination that parses, by id.
    destinations: HashMap<String, Arc<Live>>,
    /// Active destinations of live topics, by the resource types the
    /// topic's triggers watch.
    routes: HashMap<String, Vec<Route>>,
    /// Stored destinations that cannot be delivered, with why (shown by
    /// `$status`).
    problems: HashMap<String, String>,
}

/// The registry of topics and destinations.
pub struct Registry {
    snapshot: RwLock<Arc<Snapshot>>,
    /// The change marker the snapshot reflects, the reload lock, and the
    /// gate of writes' catch-ups (at most every [`CATCH_UP_EVERY`]).
    watch: ChangeWatch,
    /// Woken when a write queued notifications or destinations changed.
    pub(crate) wake: tokio::sync::Notify,
}

/// How often, at most, writes ask the database whether another instance
/// changed topics or destinations (`Registry::catch_up`).
pub const CATCH_UP_EVERY: Duration = Duration::from_millis(25);

impl Registry {
    /// An empty registry; call [`Registry::reload`] to fill it.
    pub fn new() -> Registry {
        Registry {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            watch: ChangeWatch::new(TYPES, CATCH_UP_EVERY),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Before a write on a database other instances share: catches up with
    /// topics and destinations they changed, asking the database at most
    /// every [`CATCH_UP_EVERY`] (one indexed query), so a destination
    /// written through another instance applies to every change made here
    /// from 25 ms after its write was answered, at a cost that does not grow
    /// with the write rate.
    pub async fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        if self.watch.due() {
            self.reload_if_changed(store).await?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads every topic and destination and swaps the snapshot whole.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let reload = self.watch.begin(store).await?;
        self.load(store, reload).await
    }

    /// Reloads when another instance changed topics or destinations; of
    /// several callers that notice one change, one reloads.
    pub async fn reload_if_changed(&self, store: &Store) -> Result<bool, StoreError> {
        let Some(reload) = self.watch.begin_if_changed(store).await? else {
            return Ok(false);
        };
        self.load(store, reload).await?;
        Ok(true)
    }

    /// Reads every topic and destination (under `reload`'s lock) and swaps
    /// the snapshot whole.
    async fn load(&self, store: &Store, reload: Reload<'_>) -> Result<(), StoreError> {
        let mut topics: HashMap<String, (String, Arc<Topic>)> = HashMap::new();
        let mut snapshot = Snapshot::default();
        for resource_type in TYPES {
            for stored in &fhirbox_store::load_all(store, resource_type).await? {
                let Ok(body) = serde_json::from_str::<Value>(&stored.body) else {
                    tracing::error!(resource_type, id = %stored.id, "stored body is not JSON; ignored");
                    continue;
                };
                if *resource_type == "AidboxSubscriptionTopic" {
                    match Topic::parse(&body) {
                        Ok(topic) => {
                            // Two topics with one url: the first by id wins.
                            let url = topic.url.clone();
                            match topics.get(&url) {
                                Some((first, _)) if *first < stored.id => {
                                    tracing::warn!(topic = %stored.id, used = %first, %url, "two AidboxSubscriptionTopics have one url; only the first by id is used");
                                }
                                _ => {
                                    topics.insert(url, (stored.id.clone(), Arc::new(topic)));
                                }
                            }
                        }
                        Err(problem) => {
                            tracing::warn!(id = %stored.id, %problem, "stored AidboxSubscriptionTopic cannot be used; ignored");
                        }
                    }
                    continue;
                }
                match Destination::parse(&body) {
                    Ok(destination) => {
                        let since = incarnation(store, &stored.id, stored.version_id).await?;
                        snapshot.destinations.insert(
                            stored.id.clone(),
                            Arc::new(Live {
                                id: stored.id.clone(),
                                version: stored.version_id,
                                since,
                                destination,
                                body,
                            }),
                        );
                    }
                    Err(problem) => {
                        tracing::warn!(id = %stored.id, %problem, "stored AidboxTopicDestination cannot be used; ignored");
                        snapshot.problems.insert(stored.id.clone(), problem);
                    }
                }
            }
        }
        for live in snapshot.destinations.values() {
            if !live.destination.active {
                continue;
            }
            let Some((_, topic)) = topics.get(&live.destination.topic) else {
                snapshot.problems.insert(
                    live.id.clone(),
                    "no AidboxSubscriptionTopic has this destination's topic as its url".into(),
                );
                continue;
            };
            if !topic.live {
                continue;
            }
            let mut types: Vec<&str> = topic.triggers.iter().map(|t| t.resource.as_str()).collect();
            types.sort_unstable();
            types.dedup();
            for resource_type in types {
                snapshot
                    .routes
                    .entry(resource_type.to_owned())
                    .or_default()
                    .push(Route {
                        destination: live.clone(),
                        topic: topic.clone(),
                    });
            }
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.watch.loaded(reload);
        self.wake.notify_waiters();
        Ok(())
    }

    /// The notifier a write carries, or `None` when no destination is in
    /// force (a write then costs nothing more), and a flag it raises when
    /// it queued something in the outbox (so only such writes wake the
    /// workers). Notifications for best-effort destinations are not queued:
    /// the store hands them back with the committed write's outcome
    /// (`OutboxEvent::durable` false), for `Delivery::hand_over`.
    pub fn notifier(&self) -> Option<(Notify, Arc<AtomicBool>)> {
        let snapshot = self.snapshot();
        if snapshot.routes.is_empty() {
            return None;
        }
        let queued = Arc::new(AtomicBool::new(false));
        let raised = queued.clone();
        let notify: Notify = Arc::new(move |change: &Change<'_>| {
            let Some(routes) = snapshot.routes.get(change.resource_type) else {
                return Vec::new();
            };
            let interaction = match (change.previous, change.current) {
                (None, _) => Interaction::Create,
                (Some(_), Some(_)) => Interaction::Update,
                (Some(_), None) => Interaction::Delete,
            };
            // The version before, parsed once, and only if a route needs it.
            let previous: std::cell::OnceCell<Option<Value>> = std::cell::OnceCell::new();
            let previous = || {
                previous
                    .get_or_init(|| {
                        change
                            .previous
                            .and_then(|p| serde_json::from_str::<Value>(&p.body).ok())
                    })
                    .as_ref()
            };
            let events = routes
                .iter()
                .filter(|route| {
                    route.topic.fires(
                        change.resource_type,
                        interaction,
                        change.current,
                        previous(),
                    )
                })
                .map(|route| OutboxEvent {
                    destination: route.destination.id.clone(),
                    destination_version: route.destination.version,
                    topic: route.topic.url.clone(),
                    interaction: interaction.as_str(),
                    durable: route.destination.destination.kind.is_delivered(),
                })
                .collect::<Vec<_>>();
            if events.iter().any(|e| e.durable) {
                raised.store(true, Ordering::SeqCst);
            }
            events
        });
        Some((notify, queued))
    }

    /// The destinations whose notifications this instance delivers (from
    /// the outbox, or best effort from memory).
    pub fn delivered(&self) -> Vec<Arc<Live>> {
        let mut out: Vec<Arc<Live>> = self
            .snapshot()
            .destinations
            .values()
            .filter(|l| l.destination.active)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// A stored destination by id (`None`: no such destination, or it
    /// cannot be used; see [`Registry::problem`]).
    pub fn destination(&self, id: &str) -> Option<Arc<Live>> {
        self.snapshot().destinations.get(id).cloned()
    }

    /// Why a stored destination is not delivered, if it is not.
    pub fn problem(&self, id: &str) -> Option<String> {
        self.snapshot().problems.get(id).cloned()
    }

    /// Wakes the delivery workers (a write queued notifications).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }
}

/// The first version of destination `id` since it was last deleted.
async fn incarnation(store: &Store, id: &str, version: i64) -> Result<i64, StoreError> {
    if version == 1 {
        return Ok(1);
    }
    let mut query = HistoryQuery {
        scope: HistoryScope::Instance {
            resource_type: "AidboxTopicDestination".into(),
            id: id.into(),
        },
        since: None,
        count: 100,
        cursor: None,
    };
    loop {
        let page = store.history(query.clone()).await?;
        if let Some(deleted) = page.entries.iter().find(|v| v.deleted) {
            return Ok(deleted.version_id + 1);
        }
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(1),
        }
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Kind {
    /// Whether this kind's notifications go through the outbox (the
    /// other, `kafka-best-effort`, is delivered from memory).
    pub fn is_delivered(self) -> bool {
        matches!(self, Kind::WebhookAtLeastOnce | Kind::KafkaAtLeastOnce)
    }
}

/// Keeps the registry in step with changes made through other instances.
pub fn spawn_recheck(registry: &Arc<Registry>, store: Store, every: Duration) {
    let weak = Arc::downgrade(registry);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(registry) = weak.upgrade() else {
                break;
            };
            if let Err(e) = registry.reload_if_changed(&store).await {
                tracing::warn!(error = %e, "could not re-check subscription topics and destinations");
            }
        }
    });
}
