//! The external-secrets feature on the server side (docs/external-secrets.md):
//! starting the resolver and counting its events in metrics (here), the
//! root-only `/admin/secrets` table (`admin`), and `fhirbox vault check`
//! (`check`). The write-time rules for secret references are part of every
//! write, in `fhirbox_rest::references`.

mod admin;
mod check;

pub use admin::admin_secrets;
pub use check::check_command;

use std::sync::Arc;

use fhirbox_fhir::secret_fields::secret_capable_types;
use fhirbox_secrets::{ConfigError, ResolverOptions, SecretEvents, SecretResolver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;
use crate::settings::Settings;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolutionLabels {
    secret: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Counts resolver events in Prometheus metrics. Labels carry names and
/// reasons only; a name the config does not define is counted as `(unknown)`
/// so stray references cannot grow the label set.
struct SecretMetrics {
    resolutions: Family<ResolutionLabels, Counter>,
    rotations: Family<SecretLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

impl SecretEvents for SecretMetrics {
    fn resolution(&self, name: &str, reason: &'static str) {
        let secret = if reason == "unknown_secret" {
            "(unknown)"
        } else {
            name
        };
        self.resolutions
            .get_or_create(&ResolutionLabels {
                secret: secret.to_owned(),
                result: reason.to_owned(),
            })
            .inc();
    }

    fn rotation(&self, name: &str) {
        self.rotations
            .get_or_create(&SecretLabel {
                secret: name.to_owned(),
            })
            .inc();
    }

    fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Starts the resolver when `BOX_VAULT_CONFIG` is set.
pub fn start(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Option<SecretResolver>, ConfigError> {
    let Some(path) = &settings.vault_config else {
        return Ok(None);
    };
    let events = SecretMetrics {
        resolutions: Family::default(),
        rotations: Family::default(),
        reloads: Family::default(),
    };
    metrics.with_registry(|registry| {
        registry.register(
            "secret_resolutions",
            "Uses of external secrets by secret and result",
            events.resolutions.clone(),
        );
        registry.register(
            "secret_rotations",
            "Observed changes of external secret values",
            events.rotations.clone(),
        );
        registry.register(
            "vault_config_reloads",
            "Vault config loads by result",
            events.reloads.clone(),
        );
    });
    let mut options = ResolverOptions::new(secret_capable_types());
    options.poll_interval = settings.vault_poll;
    options.watch_events = settings.vault_watch;
    options.events = Arc::new(events);
    let resolver = SecretResolver::start(path, options)?;
    tracing::info!(path = %path.display(), secrets = resolver.config().len(), "external secrets enabled");
    Ok(Some(resolver))
}
