#!/usr/bin/env python3
"""Local dress rehearsal of the HashiCorp Vault tutorial, without Kubernetes.

Uses the very ConfigMaps of deploy/kubernetes (vault config and init bundle),
a secret directory written the way the CSI driver writes it (atomic writer),
and the fhirbox binary. Steps and expectations follow docs/kubernetes-vault.md:
mount holds client-secret -> Client created from the init bundle holds only the
reference -> basic:super-secret-value is 200, a wrong password 401 -> rotate
(vault kv put) -> the new value is 200 and the old 401, with no restart.
Exits non-zero at the first mismatch.
Usage: tutorial_local.py PATH_TO_FHIRBOX_BINARY
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

sys.path.insert(0, os.path.dirname(__file__))
import csi  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PORT = 18280
BASE = f"http://127.0.0.1:{PORT}"


def configmap_file(name, key):
    doc = yaml.safe_load(open(os.path.join(ROOT, "deploy/kubernetes", name)))
    return doc["data"][key]


def get(path, user=None):
    headers = {}
    if user:
        headers["authorization"] = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    req = urllib.request.Request(BASE + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening yet


def expect(label, got, want):
    print(f"{'ok  ' if got == want else 'FAIL'} {label}: {got} (want {want})", flush=True)
    if got != want:
        raise SystemExit(1)


def eventually(label, check, want, seconds=3.0):
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got == want or time.monotonic() > deadline:
            return expect(label, got, want)
        time.sleep(0.05)


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="fhirbox-tutorial-")
    mount = os.path.join(work, "run/vault-secrets")
    # Step 3 of the tutorial: vault kv put secret/fhirbox/client client-secret=... (and the root secret).
    csi.write(mount, {"client-secret": "super-secret-value", "root-client-secret": "tutorial-root-secret",
                      "token-signing-key": "tutorial-signing-key-0123456789abcdef"})
    config = json.loads(configmap_file("configmap-vault-config.yaml", "vault-config.json"))
    for entry in config["secret"].values():
        entry["path"] = entry["path"].replace("/run/vault-secrets", mount)
    os.makedirs(os.path.join(work, "etc/fhirbox"))
    config_path = os.path.join(work, "etc/fhirbox/vault-config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    bundle_path = os.path.join(work, "init-bundle.json")
    with open(bundle_path, "w") as f:
        f.write(configmap_file("configmap-init-bundle.yaml", "init-bundle.json"))

    check = subprocess.run([binary, "vault", "check", "--config", config_path], capture_output=True, text=True)
    print(check.stdout.strip())
    expect("fhirbox vault check exit code", check.returncode, 0)
    # Step 8: the mount shows the secret file.
    expect("mount lists client-secret", "client-secret" in os.listdir(mount), True)

    env = dict(os.environ, BOX_WEB_PORT=str(PORT), BOX_DB_URL=f"sqlite:{work}/data/fhirbox.db",
               BOX_VAULT_CONFIG=config_path, BOX_INIT_BUNDLE=f"file://{bundle_path}",
               BOX_ROOT_CLIENT_SECRET_FILE=os.path.join(mount, "root-client-secret"),
               BOX_SECURITY_AUTH_KEYS_SECRET_FILE=os.path.join(mount, "token-signing-key"), RUST_LOG="warn")
    log = open(os.path.join(work, "fhirbox.log"), "w")
    server = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually("readiness", lambda: get("/health/ready")[0], 200, seconds=10)
        # Step 9: the Client holds the reference, never the value.
        status, body = get("/fhir/Client/basic", ("root", "tutorial-root-secret"))
        expect("GET Client/basic", status, 200)
        client = json.loads(body)
        expect("reference read back", client["_secret"]["extension"][1]["valueString"], "client-secret")
        expect("no value in the Client", "super-secret-value" in body, False)
        expect("curl -u basic:super-secret-value /fhir/Patient", get("/fhir/Patient", ("basic", "super-secret-value"))[0], 200)
        expect("curl -u basic:wrong-password /fhir/Patient", get("/fhir/Patient", ("basic", "wrong-password"))[0], 401)
        # Rotation: vault kv put ... client-secret='new-secret-value'; the driver swaps the files.
        csi.write(mount, {"client-secret": "new-secret-value", "root-client-secret": "tutorial-root-secret",
                          "token-signing-key": "tutorial-signing-key-0123456789abcdef"})
        eventually("new value after rotation", lambda: get("/fhir/Patient", ("basic", "new-secret-value"))[0], 200)
        expect("old value after rotation", get("/fhir/Patient", ("basic", "super-secret-value"))[0], 401)
        expect("same process (no restart)", server.poll(), None)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
    with open(os.path.join(work, "fhirbox.log")) as f:
        logs = f.read()
    expect("no secret value in the logs", any(v in logs for v in ("super-secret-value", "new-secret-value")), False)
    print("tutorial rehearsal passed")


if __name__ == "__main__":
    main()
