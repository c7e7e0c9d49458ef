//! Subscriptions (docs/subscriptions.md): which resource changes are
//! published (`AidboxSubscriptionTopic`, `topic`) and where they are
//! delivered (`AidboxTopicDestination`, `destination`: a webhook, or Kafka
//! with credentials that may come from vault files). A write queues its
//! notifications in the outbox in its own transaction (the notifier of
//! `registry`); `delivery` sends them (`notification` is their shape). It
//! depends on `fhir`, `store` and `secrets`, never on `rest` or the server.

pub mod delivery;
pub mod destination;
pub mod jaas;
mod kafka;
pub mod notification;
pub mod registry;
mod stats;
pub mod topic;

use std::sync::Arc;

use fhirbox_store::Store;

/// Subscriptions of one server instance: the registry every write consults
/// and the delivery workers.
#[derive(Clone)]
pub struct Subscriptions {
    pub registry: Arc<registry::Registry>,
    pub delivery: Arc<delivery::Delivery>,
}

impl Subscriptions {
    /// Loads topics and destinations from `store`; nothing is delivered
    /// until [`Subscriptions::start`]. `vault` resolves referenced
    /// parameters at delivery; `base` is the public base URL, for the
    /// `fullUrl` of notification entries; `events` go to the metrics.
    pub async fn load(
        store: &Store,
        vault: Option<fhirbox_secrets::SecretResolver>,
        base: Option<String>,
        events: Arc<dyn delivery::DeliveryEvents>,
    ) -> Result<Subscriptions, fhirbox_store::StoreError> {
        let registry = Arc::new(registry::Registry::new());
        registry.reload(store).await?;
        let delivery = Arc::new(delivery::Delivery::new(
            registry.clone(),
            store.clone(),
            vault,
            base,
            events,
        ));
        Ok(Subscriptions { registry, delivery })
    }

    /// Stops delivery (at shutdown, before the store closes), waiting up
    /// to `within` for the workers to give their leases up.
    pub async fn stop(&self, within: std::time::Duration) {
        self.delivery.stop(within).await;
    }

    /// Starts delivery and the periodic re-check of topics and
    /// destinations changed through other instances.
    pub fn start(&self, store: &Store, recheck: std::time::Duration) {
        registry::spawn_recheck(&self.registry, store.clone(), recheck);
        delivery::spawn(&self.delivery);
    }
}
