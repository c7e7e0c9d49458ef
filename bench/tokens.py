#!/usr/bin/env python3
"""Reads by id with other issuers' tokens against the same read with fhirbox's
own Bearer token (docs/tokens.md), in interleaved rounds on one server, so
drift on this shared machine falls on all three alike. Uses the tests' real
OpenID provider (npm oidc-provider) for an RS256 JWT checked through its key
set and for an opaque token checked by introspection (cached after first use).

    python3 bench/tokens.py [--db sqlite|postgres] [--rounds 3] [--seconds 3]
                            [--concurrency 1,16,64] [--out DIR]

Needs the release binary (cargo build --release -p fhirbox-server) and wrk.
Writes DIR/tokens-latest.{md,json} when --out is given (bench/results by default).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

OWN = "Bearer, fhirbox's own token"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(run.HERE, "results"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    work = tempfile.mkdtemp(prefix="fhirbox-tokens-")
    url = f"sqlite:{work}/fhirbox.db" if args.db == "sqlite" else run.fresh_pg("fhirbox_tokens_bench")
    env = dict(os.environ, BOX_DB_URL=url, BOX_ROOT_CLIENT_SECRET=run.ROOT_SECRET,
               BOX_SECURITY_AUTH_KEYS_SECRET=run.SIGNING_KEY, RUST_LOG="warn", BOX_WEB_PORT="18411")
    server = run.Server("fhirbox", [f"{run.RELEASE}/fhirbox"], env, 18411)
    provider = run.Provider()
    started = time.time()
    try:
        root = run.basic(("root", run.ROOT_SECRET))
        run.seed(server.port, args.patients, root)
        if args.db == "postgres":
            run.settle(url)
        for body in ({"resourceType": "Client", "id": run.LITERAL[0], "secret": run.LITERAL[1],
                      "grant_types": ["basic", "client_credentials"]},
                     {"resourceType": "AccessPolicy", "id": "bench", "engine": "allow",
                      "link": [{"reference": "Client/literal"}]}):
            assert run.http(server.port, "PUT", f"/fhir/{body['resourceType']}/{body['id']}", body, root)[0] in (200, 201)
        status, token = run.http(server.port, "POST", "/auth/token", b"grant_type=client_credentials",
                                 run.basic(run.LITERAL), "application/x-www-form-urlencoded")
        headers = {OWN: "Bearer " + json.loads(token)["access_token"]}
        headers.update(run.external_tokens(server.port, root, provider))
        script = run.lua("read", args.patients)
        rows = []
        for c in levels:
            for n in range(args.rounds):
                for name, header in headers.items():
                    r = run.wrk(server.port, "/", c, args.seconds, script, header)
                    rows.append(dict(auth=name, concurrency=c, round=n + 1, **r))
    finally:
        provider.stop()
        server.stop()
    errors = sum(r["errors"] for r in rows)
    summary = []
    for c in levels:
        own = statistics.median(r["rps"] for r in rows if r["concurrency"] == c and r["auth"] == OWN)
        for name in headers:
            mine = [r for r in rows if r["concurrency"] == c and r["auth"] == name]
            rps = statistics.median(r["rps"] for r in mine)
            summary.append({"auth": name, "concurrency": c, "median_rps": rps,
                            "p50_ms": statistics.median(r["p50_ms"] for r in mine if r["p50_ms"] is not None),
                            "ratio_to_own": rps / own if own else 0,
                            "target": {run.EXTERNAL_JWT: ">= 0.95", run.EXTERNAL_OPAQUE: ">= 0.9"}.get(name, "")})
    commit = run.subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=run.ROOT, capture_output=True, text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "db": args.db,
              "rounds": args.rounds, "seconds": args.seconds, "patients": args.patients, "summary": summary,
              "runs": rows, "elapsed_s": round(time.time() - started, 1)}
    md = [f"# Reads with other issuers' tokens ({args.db})", "",
          f"{report['date']}, commit `{commit}`, {os.cpu_count()} cores; GET /fhir/Patient/{{id}} over {args.patients} "
          f"Patients, {args.rounds} interleaved rounds of {args.seconds} s per token kind and concurrency, medians; "
          f"took {report['elapsed_s']} s.", "",
          run.table(summary, [("token", lambda r: r["auth"]), ("c", lambda r: str(r["concurrency"])),
                              ("median req/s", lambda r: f"{r['median_rps']:.0f}"), ("p50 ms", lambda r: run.fmt(r["p50_ms"], 2)),
                              ("/ own token", lambda r: f"{r['ratio_to_own']:.2f}"), ("target", lambda r: r["target"])]), ""]
    if args.out:
        run.save_report(args.out, f"tokens-{args.db}-latest", report, md)
    print("\n".join(md))
    if errors:
        print(f"{errors} request errors", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
