//! The FHIR RESTful API of fhirbox without HTTP (FHIR R4 §3.1.0): read,
//! vread, create, update, patch, delete, search, history, batch and
//! transaction bundles, the CapabilityStatement, the `Prefer`/ETag rules and
//! the checks every stored body passes (secret references, the write rules
//! of the auth types).
//!
//! The server parses HTTP into the arguments of [`Rest`]'s methods and
//! renders a [`Reply`] or a [`RestError`] back; nothing here knows about
//! axum, headers or sockets. See ARCHITECTURE.md.

pub mod bundle;
mod bundle_out;
pub mod capability;
pub mod error;
pub mod fhirpath_patch;
pub mod hooks;
pub mod include;
pub mod indexing;
mod interactions;
pub mod patch;
pub mod references;
pub mod reply;
pub mod resource;
pub mod search;
pub mod shape;
mod validate;

use std::sync::Arc;

use fhirbox_auth::AuthService;
use fhirbox_store::{ResourceWrite, Store, StoreResult, WriteOp, WriteOutcome};
use fhirbox_subscriptions::Subscriptions;

pub use error::{ErrorKind, RestError};
pub use reply::{Prefer, ReadConditions, Reply, ReturnPreference};
pub use resource::WriteChecks;

/// The largest `BOX_CONDITIONAL_DELETE_MAX` (each match is a write of
/// one transaction).
pub const MAX_CONDITIONAL_DELETE: usize = 1000;

/// What the REST layer reports to the server's metrics.
pub trait RestEvents: Send + Sync {
    /// A bundle entry was refused by access control (`Denial::reason`).
    fn entry_denied(&self, reason: &'static str);
}

/// Reports nothing.
pub struct NoEvents;

impl RestEvents for NoEvents {
    fn entry_denied(&self, _reason: &'static str) {}
}

/// The FHIR interactions over one store: everything a handler needs, and
/// nothing else of the server's state.
#[derive(Clone)]
pub struct Rest {
    store: Store,
    auth: Arc<AuthService>,
    /// What every write is checked against (secret references, structure, size).
    checks: WriteChecks,
    events: Arc<dyn RestEvents>,
    /// Topics and destinations: every write asks which notifications it
    /// queues (docs/subscriptions.md).
    subscriptions: Subscriptions,
}

impl Rest {
    pub fn new(
        store: Store,
        auth: Arc<AuthService>,
        checks: WriteChecks,
        events: Arc<dyn RestEvents>,
        subscriptions: Subscriptions,
    ) -> Rest {
        Rest {
            store,
            auth,
            checks,
            events,
            subscriptions,
        }
    }

    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores one write, then refreshes caches that depend on what was written.
    pub async fn write(&self, mut op: WriteOp) -> StoreResult<WriteOutcome> {
        let (notify, queued) = self.notifier().await.unzip();
        op.notify = notify;
        let outcome = self.store.write(op).await?;
        // Best-effort notifications leave with the commit, before any await.
        self.subscriptions
            .delivery
            .hand_over(std::slice::from_ref(&outcome));
        self.after_writes(std::slice::from_ref(&outcome), queued)
            .await;
        Ok(outcome)
    }

    /// Stores several writes atomically, then refreshes caches.
    pub async fn write_all(&self, mut ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        let (notify, queued) = self.notifier().await.unzip();
        for op in &mut ops {
            op.notify.clone_from(&notify);
        }
        let outcomes = self.store.write_all(ops).await?;
        self.subscriptions.delivery.hand_over(&outcomes);
        self.after_writes(&outcomes, queued).await;
        Ok(outcomes)
    }

    /// `GET /AidboxTopicDestination/{id}/$status` (docs/subscriptions.md):
    /// the destination's delivery counters on this instance and its queue.
    pub async fn destination_status(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Reply, RestError> {
        if resource_type != "AidboxTopicDestination" {
            return Err(RestError::not_found(
                "$status is an operation of AidboxTopicDestination only",
            ));
        }
        resource::check_id(id)?;
        let registry = &self.subscriptions.registry;
        if registry.destination(id).is_none() && registry.problem(id).is_none() {
            // Perhaps created through another instance a moment ago.
            registry.reload_if_changed(&self.store).await?;
        }
        match self.subscriptions.delivery.status(id).await? {
            Some(parameters) => Ok(Reply::json(parameters.to_string())),
            None => Err(RestError::not_found(format!(
                "AidboxTopicDestination/{id} is not stored"
            ))),
        }
    }

    /// The notifier of the topics and destinations in force. Instances
    /// sharing a PostgreSQL database first catch up with destinations
    /// written through another instance (`Registry::catch_up`: at most one
    /// indexed query every 25 ms), so a change made from 25 ms after a
    /// destination's write was answered is notified, whichever instance
    /// makes it; an SQLite database has one instance.
    async fn notifier(
        &self,
    ) -> Option<(fhirbox_store::Notify, Arc<std::sync::atomic::AtomicBool>)> {
        let registry = &self.subscriptions.registry;
        if matches!(self.store, Store::Postgres(_)) {
            if let Err(e) = registry.catch_up(&self.store).await {
                tracing::warn!(error = %e, "could not check for new subscription destinations");
            }
        }
        registry.notifier()
    }

    /// A changed Client or AccessPolicy takes effect on this instance before
    /// the write is answered (other instances pick it up on their re-check).
    async fn after_writes(
        &self,
        outcomes: &[WriteOutcome],
        queued: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) {
        let touches_subscriptions = outcomes.iter().any(|o| {
            o.changed
                && fhirbox_subscriptions::registry::TYPES
                    .contains(&o.resource.resource_type.as_str())
        });
        if touches_subscriptions {
            if let Err(e) = self.subscriptions.registry.reload(&self.store).await {
                tracing::error!(error = %e, "could not reload subscription topics and destinations after a write");
            }
        }
        for o in outcomes {
            if o.changed
                && o.resource.deleted
                && o.resource.resource_type == "AidboxTopicDestination"
            {
                self.subscriptions
                    .delivery
                    .deleted(&o.resource.id, o.resource.version_id)
                    .await;
            }
        }
        if queued.is_some_and(|q| q.load(std::sync::atomic::Ordering::SeqCst)) {
            // Their notifications need not read back what was just written.
            self.subscriptions.delivery.remember_written(outcomes);
            self.subscriptions.registry.wake();
        }
        let touches_auth = outcomes.iter().any(|o| {
            o.changed && fhirbox_auth::AUTH_TYPES.contains(&o.resource.resource_type.as_str())
        });
        if touches_auth {
            if let Err(e) = self.auth.reload(&self.store).await {
                tracing::error!(error = %e, "could not reload clients and policies after a write");
            }
        }
    }
}
