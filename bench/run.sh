#!/usr/bin/env bash
# fhirbox benchmarks side by side: one command, results in bench/results/latest.{md,json}
# and bench/results/auth-attack-latest.{md,json}.
#   bench/run.sh                 default run (under 10 minutes on 2 cores once tools are built)
#   bench/run.sh --quick         1-minute smoke run (what CI runs; CI does not judge speed)
#   bench/run.sh --with-helios   also build the Helios FHIR server into bench/.tools first (slow, once)
#   bench/run.sh --read-only --db sqlite   only the read scenario (auth against the no-auth
#                                baseline), printed, no files written; skips the credential attacks
#   bench/run.sh --validation-only --db sqlite   only create/update with BOX_VALIDATION=strict
#                                against =off, printed, no files written
#   bench/run.sh --search        the search benchmark instead (bench/search.py): 50 Synthea
#                                patients loaded into fhirbox and Helios, six searches at
#                                c=1/16/64; results in bench/results/search-latest.{md,json}
# Load generator: wrk from Debian (installed when missing), plus bench's own crud-load
# for the ordered create/read/update/delete chain. PostgreSQL at 127.0.0.1:5432
# (user postgres, trust auth), or FHIRBOX_BENCH_POSTGRES.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=()
ATTACK=()                # bench/auth-attack.py gets --quick and the same --out directory as run.py
READ_ONLY=""
SEARCH=""
OUT=bench/results
prev=""
for arg in "$@"; do
  [ "$prev" = "--out" ] && OUT="$arg"
  prev="$arg"
  case "$arg" in
    --quick) ATTACK+=(--quick); ARGS+=("$arg") ;;
    --read-only|--validation-only) READ_ONLY=1; ARGS+=("$arg") ;;
    --search) SEARCH=1 ;;
    --out=*) OUT="${arg#--out=}"; ARGS+=("$arg") ;;
    --with-helios)
      if [ ! -x bench/.tools/helios/bin/hfs ]; then
        CARGO_TARGET_DIR=bench/.tools/helios-target cargo install helios-hfs --version 0.2.7 \
          --no-default-features --features R4,sqlite,postgres --root bench/.tools/helios \
          || echo "Helios could not be built here; the run carries on without it"
      fi ;;
    *) ARGS+=("$arg") ;;
  esac
done
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release -q -p fhirbox-server -p fhirbox-bench
if [ -n "$SEARCH" ]; then
  exec python3 bench/search.py "${ARGS[@]}"
fi
python3 bench/run.py "${ARGS[@]}"
[ -n "$READ_ONLY" ] || python3 bench/auth-attack.py "${ATTACK[@]}" --out "$OUT"
