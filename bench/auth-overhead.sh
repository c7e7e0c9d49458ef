#!/usr/bin/env bash
# Read throughput of GET /fhir/Patient/{id} authenticated three ways, next to
# the same handlers without the auth layer, all measured in one run.
# Usage: bench/auth-overhead.sh [duration-seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNECTIONS="${2:-16}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }

cargo build --release -q -p fhirbox-server -p fhirbox-bench
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

ROOT_SECRET="bench-root-secret"
# A CSI-style mount (atomic-writer layout) and a vault config for the vault-backed client.
python3 -c "import sys; sys.path.insert(0, 'scripts'); import csi; csi.write('$WORK/run/vault-secrets', {'client-secret': 'bench-vault-secret'})"
cat >"$WORK/vault-config.json" <<JSON
{"secret": {"client-secret": {"path": "$WORK/run/vault-secrets/client-secret", "scope": ["Client/vaulted"]}}}
JSON
BOX_VAULT_CONFIG="$WORK/vault-config.json" BOX_WEB_PORT=18181 BOX_DB_URL="sqlite:$WORK/db/fhirbox.db" BOX_ROOT_CLIENT_SECRET="$ROOT_SECRET" \
  BOX_SECURITY_AUTH_KEYS_SECRET="bench-signing-key-0123456789abcdef" RUST_LOG=warn \
  target/release/fhirbox >"$WORK/fhirbox.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf localhost:18181/health/ready >/dev/null && break; sleep 0.1; done

python3 - "$ROOT_SECRET" <<'PY'
import json, sys, urllib.request, base64
auth = "Basic " + base64.b64encode(f"root:{sys.argv[1]}".encode()).decode()
def call(method, path, body):
    req = urllib.request.Request("http://127.0.0.1:18181" + path, data=json.dumps(body).encode(), method=method,
                                 headers={"content-type": "application/fhir+json", "authorization": auth})
    return urllib.request.urlopen(req).status
for chunk in range(10):
    entries = [{"resource": {"resourceType": "Patient", "id": f"p{chunk*100+i}", "name": [{"family": f"F{i}"}]},
                "request": {"method": "PUT", "url": f"Patient/p{chunk*100+i}"}} for i in range(100)]
    call("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
call("PUT", "/fhir/Client/bench", {"resourceType": "Client", "id": "bench", "secret": "bench-client-secret",
                                   "grant_types": ["basic", "client_credentials"]})
ref = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
                     {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "client-secret"}]}
call("PUT", "/fhir/Client/vaulted", {"resourceType": "Client", "id": "vaulted", "_secret": ref, "grant_types": ["basic"]})
call("PUT", "/fhir/AccessPolicy/bench", {"resourceType": "AccessPolicy", "id": "bench", "engine": "allow",
                                         "link": [{"reference": "Client/bench"}, {"reference": "Client/vaulted"}]})
PY
TOKEN="$(curl -sf -u bench:bench-client-secret -d grant_type=client_credentials localhost:18181/auth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"

BOX_VAULT_CONFIG="$WORK/vault-config.json" BOX_WEB_PORT=18182 BOX_DB_URL="sqlite:$WORK/db/fhirbox.db" RUST_LOG=warn \
  target/release/baseline-server >"$WORK/baseline.log" 2>&1 &
for _ in $(seq 1 100); do curl -sf localhost:18182/health/ready >/dev/null && break; sleep 0.1; done

cat >"$WORK/read.lua" <<'LUA'
math.randomseed(7)
request = function() return wrk.format("GET", "/fhir/Patient/p" .. math.random(0, 999)) end
LUA
run() { # name port header
  local out
  out="$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/read.lua" ${3:+-H "$3"} "http://127.0.0.1:$2")"
  local rps non2xx
  rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  non2xx="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
  echo "$1 $rps ${non2xx:-0}"
}
BASIC="Authorization: Basic $(printf 'bench:bench-client-secret' | base64)"
VAULTED="Authorization: Basic $(printf 'vaulted:bench-vault-secret' | base64)"
{
  run baseline 18182 ""
  run basic-vault 18181 "$VAULTED"
  run basic-literal 18181 "$BASIC"
  run bearer 18181 "Authorization: Bearer $TOKEN"
  run baseline-again 18182 ""
} >"$WORK/results"
python3 - "$WORK/results" "$CONNECTIONS" "$DURATION" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
base = (float(rows[0][1]) + float(rows[-1][1])) / 2
print(f"GET /fhir/Patient/{{id}} on SQLite, wrk -c{sys.argv[2]} -d{sys.argv[3]}s, 1000 patients")
print("| scenario | req/s | ratio to no-auth baseline | non-2xx |")
print("|---|---|---|---|")
for name, rps, errors in rows:
    print(f"| {name} | {float(rps):.0f} | {float(rps)/base:.2f} | {errors} |")
PY
