#!/usr/bin/env python3
"""Credential attacks against the release binary, measured as comparisons
inside one run (this machine is noisy: no absolute thresholds).

1. Client-id enumeration by timing: sequential failed checks, the kinds
   interleaved round robin so drift hits all of them alike. An unknown id must
   take about as long as an existing one (p50 ratio target 0.8..1.25): the
   server pads every failed secret check to about one KDF run.
2. Legitimate latency under a bounded flood: F threads (in a child process, so
   they do not take the GIL from the timed requests) send wrong secrets for one
   existing client for D seconds, while every ~100 ms an AccessPolicy is
   written and a legit client with a cached verification is timed, and every
   second a brand-new client is created and its first request (one KDF run)
   is timed. The same legit requests without the flood are the baseline.

Every enumeration answer must be 401 and every legit request 200, or the run
exits non-zero. Results: --out DIR/auth-attack-latest.{json,md}.
Usage: bench/auth-attack.py [--quick] [--out DIR]"""
import argparse
import base64
import collections
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT_DIR = os.path.dirname(HERE)
ROOT = ("root", "attack-root-secret")
WRONG = "definitely-not-the-secret"
ENUM_KINDS = [
    # name, method, path, client id, explanation
    ("basic: unknown id", "GET", "/fhir/Patient", "no-such-client", "Basic, id that does not exist, wrong secret"),
    ("basic: known id", "GET", "/fhir/Patient", "known", "Basic, existing literal-secret client, wrong secret"),
    ("basic: inactive id", "GET", "/fhir/Patient", "inactive", "Basic, existing client with active=false, wrong secret"),
    ("token: unknown id", "POST", "/auth/token", "no-such-client", "client_credentials token request, id that does not exist, wrong secret"),
    ("token: id without the grant", "POST", "/auth/token", "basic-only", "client_credentials token request, existing client with grant_types [basic], wrong secret"),
]
RATIOS = [("basic: unknown id", "basic: known id"), ("basic: unknown id", "basic: inactive id"),
          ("token: unknown id", "token: id without the grant")]
RATIO_TARGET = (0.8, 1.25)


def basic(user):
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


class Conn:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, port, timeout=120, source=None):
        self.port, self.timeout, self.c, self.source = port, timeout, None, source

    def request(self, method, path, body=None, user=None, content_type="application/fhir+json"):
        headers = {"content-type": content_type}
        if user:
            headers["authorization"] = basic(user)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout,
                                                    source_address=(self.source, 0) if self.source else None)
            try:
                self.c.request(method, path, body=data, headers=headers)
                r = self.c.getresponse()
                payload = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
            except Exception:
                self.close()
                raise

    def timed(self, *args, **kw):
        start = time.perf_counter()
        status, _ = self.request(*args, **kw)
        return status, (time.perf_counter() - start) * 1000

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def pct(samples, p):
    s = sorted(samples)
    if not s:
        return None
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(samples):
    return {"n": len(samples), "p50_ms": pct(samples, 50), "p90_ms": pct(samples, 90), "p99_ms": pct(samples, 99),
            "max_ms": max(samples) if samples else None}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- flood worker

def flood_worker(port, threads, ramp, seconds, client_id, source):
    """Runs in a child process: `threads` threads send wrong-secret Basic
    requests for `client_id` until the window ends; prints JSON counters."""
    user = (client_id, WRONG)
    started = time.perf_counter()
    window = (started + ramp, started + ramp + seconds)
    lock = threading.Lock()
    statuses, in_window = collections.Counter(), [0]

    def run():
        conn, mine, counted = Conn(port, timeout=60, source=source or None), collections.Counter(), 0
        while time.perf_counter() < window[1]:
            try:
                status, _ = conn.request("GET", "/fhir/Patient", user=user)
                key = str(status)
            except Exception as e:  # a refused or dropped connection is a finding too
                key = f"error: {type(e).__name__}"
                time.sleep(0.01)
            mine[key] += 1
            if window[0] <= time.perf_counter() <= window[1] and not key.startswith("error"):
                counted += 1
        conn.close()
        with lock:
            statuses.update(mine)
            in_window[0] += counted

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    print("started", flush=True)
    for t in pool:
        t.join()
    print(json.dumps({"statuses": dict(statuses), "answered_in_window": in_window[0], "window_s": seconds}), flush=True)


# ---------------------------------------------------------------- the run

class Server:
    def __init__(self, work):
        self.port = free_port()
        env = dict(os.environ, BOX_WEB_PORT=str(self.port), BOX_DB_URL=f"sqlite:{work}/fhirbox.db",
                   BOX_ROOT_CLIENT_SECRET=ROOT[1], RUST_LOG="warn")
        self.log = open(os.path.join(work, "fhirbox.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(ROOT_DIR, "target/release/fhirbox")], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.perf_counter() + 60
        probe = Conn(self.port, timeout=2)
        while True:
            try:
                if probe.request("GET", "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                self.stop()
                with open(os.path.join(work, "fhirbox.log"), "rb") as f:
                    raise SystemExit(f"fhirbox did not become ready: {f.read()[-2000:].decode(errors='replace')}")
            time.sleep(0.05)
        probe.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def put(conn, body, problems):
    status, payload = conn.request("PUT", f"/fhir/{body['resourceType']}/{body['id']}", body, ROOT)
    if status not in (200, 201):
        problems.append(f"PUT {body['resourceType']}/{body['id']} answered {status}: {payload[:200]!r}")
    return status


def client(cid, secret, grants=("basic", "client_credentials"), **extra):
    return dict({"resourceType": "Client", "id": cid, "secret": secret, "grant_types": list(grants)}, **extra)


def allow(pid, *clients):
    return {"resourceType": "AccessPolicy", "id": pid, "engine": "allow",
            "link": [{"reference": f"Client/{c}"} for c in clients]}


def enumeration(port, rounds, warmup, problems, source=None):
    # From an address of its own: its failures make that address suspect,
    # which must not slow the legit clients of the later phases.
    conn = Conn(port, source=source)
    samples = {k[0]: [] for k in ENUM_KINDS}
    statuses = {k[0]: collections.Counter() for k in ENUM_KINDS}
    for i in range(warmup + rounds):
        # Round robin, starting at a different kind each round so no kind
        # always follows the same one.
        order = ENUM_KINDS[i % len(ENUM_KINDS):] + ENUM_KINDS[:i % len(ENUM_KINDS)]
        for name, method, path, cid, _ in order:
            if method == "GET":
                status, ms = conn.timed("GET", path, user=(cid, WRONG))
            else:
                status, ms = conn.timed("POST", path, b"grant_type=client_credentials", user=(cid, WRONG),
                                        content_type="application/x-www-form-urlencoded")
            if i >= warmup:
                samples[name].append(ms)
                statuses[name][str(status)] += 1
            elif status != 401:
                statuses[name][str(status)] += 1
    conn.close()
    kinds = []
    for name, method, path, cid, what in ENUM_KINDS:
        row = dict(kind=name, what=what, request=f"{method} {path}", **summary(samples[name]), statuses=dict(statuses[name]))
        kinds.append(row)
        if set(statuses[name]) != {"401"}:
            problems.append(f"enumeration kind '{name}' answered {dict(statuses[name])}; every answer must be 401")
    by = {k["kind"]: k for k in kinds}
    ratios = []
    for a, b in RATIOS:
        r = by[a]["p50_ms"] / by[b]["p50_ms"]
        ratios.append({"what": f"p50({a}) / p50({b})", "ratio": r, "target": f"{RATIO_TARGET[0]}..{RATIO_TARGET[1]}",
                       "within_target": RATIO_TARGET[0] <= r <= RATIO_TARGET[1]})
    return kinds, ratios


def legit_phase(port, label, legit, seconds, problems):
    """Every ~100 ms: write an AccessPolicy, then time a request of `legit`
    (verified before the phase). Every second: create a new client with an
    allow policy and time its first request. Returns the samples."""
    cached, cold, writes = [], [], []
    stop = time.perf_counter() + seconds

    def ticker():
        conn, n = Conn(port), 0
        while time.perf_counter() < stop:
            tick = time.perf_counter()
            n += 1
            # Alternate the links so every write is a real change of an AccessPolicy.
            body = allow("churn", "legit-a", *(["legit-b"] if n % 2 else []))
            status, ms = conn.timed("PUT", "/fhir/AccessPolicy/churn", body, ROOT)
            writes.append(ms)
            if status not in (200, 201):
                problems.append(f"{label}: AccessPolicy write answered {status}")
            status, ms = conn.timed("GET", "/fhir/Patient?_count=1", user=legit)
            cached.append(ms)
            if status != 200:
                problems.append(f"{label}: legit cached request answered {status}")
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
        conn.close()

    def newcomer():
        conn = Conn(port)
        while time.perf_counter() < stop:
            tick = time.perf_counter()
            cid = f"new-{label}-{uuid.uuid4().hex[:8]}"
            secret = uuid.uuid4().hex
            put(conn, client(cid, secret), problems)
            put(conn, allow(f"{cid}-allow", cid), problems)
            status, ms = conn.timed("GET", "/fhir/Patient?_count=1", user=(cid, secret))
            cold.append(ms)
            if status != 200:
                problems.append(f"{label}: first request of new client {cid} answered {status}")
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))
        conn.close()

    threads = [threading.Thread(target=ticker), threading.Thread(target=newcomer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"legit_cached": summary(cached), "legit_cold_new_client": summary(cold), "policy_write": summary(writes)}


def flood(port, cfg, legit, problems):
    """The flood in a child process, the legit phase in this one."""
    worker = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--flood-worker", str(port), str(cfg["flood_threads"]),
                               str(cfg["ramp_s"]), str(cfg["seconds"]), "target", cfg["flood_from"]],
                              stdout=subprocess.PIPE, text=True)
    try:
        if worker.stdout.readline().strip() != "started":
            raise SystemExit("the flood worker did not start")
        time.sleep(cfg["ramp_s"])
        phase = legit_phase(port, "flood", legit, cfg["seconds"], problems)
        out, _ = worker.communicate(timeout=180)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    counts = json.loads(out.strip().splitlines()[-1])
    phase["flood"] = {"threads": cfg["flood_threads"], "seconds": cfg["seconds"], "statuses": counts["statuses"],
                      "from": cfg["flood_from"] or "127.0.0.1",
                      "answered_per_s": counts["answered_in_window"] / counts["window_s"]}
    return phase


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--flood-worker":
        port, threads, ramp, seconds, cid, source = sys.argv[2:8]
        flood_worker(int(port), int(threads), float(ramp), float(seconds), cid, source)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about half a minute")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for auth-attack-latest.{json,md}")
    # The attacker's own address by default (127.0.0.2 is loopback too); pass
    # --flood-from 127.0.0.1 to share the legit clients' address, as behind a
    # NAT, where the address's suspect queue slows their KDF checks too.
    parser.add_argument("--flood-from", default="127.0.0.2", help="source address of the flood (default 127.0.0.2)")
    args = parser.parse_args()
    cfg = ({"enum_rounds": 20, "enum_warmup": 2, "flood_threads": 64, "seconds": 3, "ramp_s": 0.5} if args.quick
           else {"enum_rounds": 100, "enum_warmup": 3, "flood_threads": 200, "seconds": 10, "ramp_s": 1.0})
    cfg["flood_from"] = "" if args.flood_from == "127.0.0.1" else args.flood_from
    started = time.time()
    problems = []
    work = tempfile.mkdtemp(prefix="fhirbox-auth-attack-")
    server = Server(work)
    try:
        port = server.port
        root = Conn(port)
        for body in (client("known", "known-secret-value"), client("inactive", "inactive-secret-value", active=False),
                     client("basic-only", "basic-only-secret-value", grants=("basic",)),
                     client("target", "target-secret-value", grants=("basic",)),
                     client("legit-a", "legit-a-secret-value", grants=("basic",)),
                     client("legit-b", "legit-b-secret-value", grants=("basic",)),
                     allow("legit", "legit-a", "legit-b"), allow("churn", "legit-a")):
            put(root, body, problems)
        root.close()
        if problems:
            raise SystemExit("setup failed:\n" + "\n".join(problems))

        kinds, ratios = enumeration(port, cfg["enum_rounds"], cfg["enum_warmup"], problems, source="127.0.0.3")

        # Each phase uses its own legit client, verified just before it, so its
        # 30-second verification stays cached for the whole phase.
        results = {}
        for phase, legit in (("baseline", ("legit-a", "legit-a-secret-value")), ("flood", ("legit-b", "legit-b-secret-value"))):
            warm = Conn(port)
            status, _ = warm.request("GET", "/fhir/Patient?_count=1", user=legit)
            warm.close()
            if status != 200:
                problems.append(f"{phase}: legit client {legit[0]} answered {status} before the phase")
            if phase == "baseline":
                results[phase] = legit_phase(port, phase, legit, cfg["seconds"], problems)
            else:
                results[phase] = flood(port, cfg, legit, problems)
    finally:
        server.stop()

    base, under = results["baseline"], results["flood"]
    comparisons = []
    for key, label in (("legit_cached", "legit request, cached verification"), ("legit_cold_new_client", "first request of a new client (one KDF run)")):
        for p in ("p50_ms", "p99_ms"):
            if base[key][p] and under[key][p] is not None:
                comparisons.append({"what": f"{label}: {p[:3]} under flood / baseline", "ratio": under[key][p] / base[key][p]})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT_DIR, capture_output=True, text=True).stdout.strip()
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "mode": "quick" if args.quick else "default",
        "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "config": cfg,
        "enumeration": {"kinds": kinds, "ratios": ratios},
        "flood": {"baseline": base, "under_flood": under, "ratios": comparisons},
        "problems": problems, "elapsed_s": round(time.time() - started, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "auth-attack-latest.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    md = markdown(report)
    with open(os.path.join(args.out, "auth-attack-latest.md"), "w") as f:
        f.write(md)
    print(md)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


def f1(v):
    return "-" if v is None else f"{v:.1f}"


def markdown(r):
    cfg, en, fl = r["config"], r["enumeration"], r["flood"]
    lines = [f"# Credential attacks ({r['mode']})", "",
             f"{r['date']}, commit `{r['commit']}`, {r['machine']['cores']} cores, kernel {r['machine']['kernel']}, "
             f"Python {r['machine']['python']} clients on the same machine, SQLite; took {r['elapsed_s']} s. "
             "Compare figures within this run only.", "",
             f"## Client-id enumeration by timing ({cfg['enum_rounds']} rounds, kinds interleaved round robin, sequential)", "",
             "| kind | request | p50 ms | p90 ms | statuses |", "|---|---|---|---|---|"]
    for k in en["kinds"]:
        lines.append(f"| {k['what']} | {k['request']} | {f1(k['p50_ms'])} | {f1(k['p90_ms'])} | "
                     + ", ".join(f"{s}: {n}" for s, n in sorted(k["statuses"].items())) + " |")
    lines += ["", "| ratio | value | target | |", "|---|---|---|---|"]
    for x in en["ratios"]:
        lines.append(f"| {x['what']} | {x['ratio']:.2f} | {x['target']} | {'within' if x['within_target'] else 'OUTSIDE'} |")
    fc = fl["under_flood"]["flood"]
    lines += ["", f"## Legitimate latency under a flood of wrong secrets ({fc['threads']} threads from {fc.get('from', '127.0.0.1')}, {fc['seconds']} s, one target client; legit clients on 127.0.0.1)", "",
              "Every ~100 ms an AccessPolicy is written and a legit client whose verification is cached is timed; "
              "every second a new client is created and its first request (one KDF run) is timed.", "",
              "| request | phase | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for key, label in (("legit_cached", "legit, cached verification"), ("legit_cold_new_client", "new client, first request"),
                       ("policy_write", "AccessPolicy PUT (root)")):
        for phase, name in (("baseline", "no flood"), ("under_flood", "flood")):
            s = fl[phase][key]
            lines.append(f"| {label} | {name} | {s['n']} | {f1(s['p50_ms'])} | {f1(s['p99_ms'])} | {f1(s['max_ms'])} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    for x in fl["ratios"]:
        lines.append(f"| {x['what']} | {x['ratio']:.2f} |")
    lines += ["", f"Flood: {fc['answered_per_s']:.0f} requests answered per second; statuses "
              + ", ".join(f"{s}: {n}" for s, n in sorted(fc["statuses"].items())) + "."]
    if r["problems"]:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
