#!/usr/bin/env python3
"""Rotation latency: atomic-writer swap -> first successful request with the
new value, over N swaps, idle and under read load. Starts the release binary.
Usage: bench/rotation-latency.py [swaps]"""
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'scripts'))
import csi  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
SWAPS = int(ARGS[0]) if ARGS else 50
AS_JSON = "--json" in sys.argv
PORT = 18191

BASE = f"http://127.0.0.1:{PORT}"
ROOT = "rotation-root-secret"


def call(method, path, body=None, user=("root", ROOT)):
    auth = "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"content-type": "application/fhir+json", "authorization": auth})
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    work = tempfile.mkdtemp()
    mount = os.path.join(work, "run/vault-secrets")
    csi.write(mount, {"client-secret": "v0"})
    config = os.path.join(work, "vault-config.json")
    with open(config, "w") as f:
        json.dump({"secret": {"client-secret": {"path": os.path.join(mount, "client-secret"), "scope": ["Client/basic"]}}}, f)
    env = dict(os.environ, BOX_WEB_PORT=str(PORT), BOX_DB_URL=f"sqlite:{work}/db/fhirbox.db",
               BOX_ROOT_CLIENT_SECRET=ROOT, BOX_VAULT_CONFIG=config, RUST_LOG="warn")
    server = subprocess.Popen([os.path.join(os.path.dirname(__file__), "../target/release/fhirbox")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen(BASE + "/health/ready").status == 200:
                    break
            except Exception:
                time.sleep(0.05)
        ref = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
                             {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "client-secret"}]}
        assert call("PUT", "/fhir/Client/basic", {"resourceType": "Client", "id": "basic", "_secret": ref, "grant_types": ["basic"]}) == 201
        assert call("PUT", "/fhir/AccessPolicy/p", {"resourceType": "AccessPolicy", "id": "p", "engine": "allow",
                                                    "link": [{"reference": "Client/basic"}]}) == 201
        results = {}
        for mode in ("idle", "under load"):
            stop = threading.Event()
            loaders = []
            if mode == "under load":
                def load():
                    while not stop.is_set():
                        call("GET", "/fhir/Patient?_count=1")
                loaders = [threading.Thread(target=load) for _ in range(4)]
                for t in loaders:
                    t.start()
            samples = []
            for i in range(SWAPS):
                value = f"{mode.replace(' ', '-')}-{i}-{time.time_ns()}"
                start = time.perf_counter()
                csi.write(mount, {"client-secret": value})
                while call("GET", "/fhir/Patient?_count=1", user=("basic", value)) != 200:
                    if time.perf_counter() - start > 5:
                        raise SystemExit(f"swap {i} not picked up within 5 s")
                samples.append((time.perf_counter() - start) * 1000)
            stop.set()
            for t in loaders:
                t.join()
            results[mode] = samples
        if AS_JSON:
            print(json.dumps({mode: {"swaps": len(s), "median_ms": statistics.median(s), "p90_ms": sorted(s)[max(0, int(len(s) * 0.9) - 1)],
                                     "max_ms": max(s)} for mode, s in results.items()}))
            return
        print(f"Rotation latency (swap -> first 200 with the new value), {SWAPS} swaps each, SQLite, release build")
        print("| mode | median ms | p90 ms | max ms |")
        print("|---|---|---|---|")
        for mode, s in results.items():
            s = sorted(s)
            print(f"| {mode} | {statistics.median(s):.1f} | {s[int(len(s) * 0.9) - 1]:.1f} | {s[-1]:.1f} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
