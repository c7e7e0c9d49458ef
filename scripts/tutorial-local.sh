#!/usr/bin/env bash
# Runs the Vault tutorial locally (see scripts/tutorial_local.py) against the
# release binary, building it first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p fhirbox-server
python3 scripts/tutorial_local.py target/release/fhirbox
