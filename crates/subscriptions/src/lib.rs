//! Subscriptions (docs/subscriptions.md): which resource changes are
//! published (`AidboxSubscriptionTopic`) and where they are delivered
//! (`AidboxTopicDestination`: a webhook, or Kafka with credentials that may
//! come from vault files). It depends on `fhir` and `store` (and, for
//! delivery, will on `secrets`), never on `rest` or the server.
//!
//! Built so far: the destination's shape, checked on every write
//! (`destination`), with the Kafka JAAS configuration parsed (`jaas`).

pub mod destination;
pub mod jaas;
pub mod topic;
