#!/usr/bin/env bash
# Offline validation of the Dockerfile, deploy/kubernetes and the Helm chart
# (see scripts/validate_deploy.py). Installs what it needs: Go and the sprig
# template library from Debian (to render the chart with Go's own
# text/template, as Helm does) and kubernetes-validate / jsonschema from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0 jsonschema pyyaml
fi
if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || [ ! -d /usr/share/gocode/src/gopkg.in/yaml.v3 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev >/dev/null
fi
TOOLS="$(mktemp -d)"
trap 'rm -rf "$TOOLS"' EXIT
GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$TOOLS/cache" \
  go build -o "$TOOLS/helm-render" deploy/tools/helm-render/main.go

cargo build -q -p fhirbox-server
python3 scripts/validate_deploy.py --helm-render "$TOOLS/helm-render" --fhirbox target/debug/fhirbox
