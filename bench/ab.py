#!/usr/bin/env python3
"""Two fhirbox binaries side by side on SQLite, in interleaved rounds: the
quick A/B check of a change to the request or storage path.

    bench/ab.py BEFORE AFTER [--rounds 3] [--seconds 3] [--concurrency 1,16,64]
                [--scenarios read,identifier,create,crud,upsert]

Both servers run at once, each on a fresh database seeded with the same
2,000 Patients (each with an identifier); `upsert` is a conditional create
(If-None-Exist) over 1,000 identifiers, as in the search benchmark. Every round runs each scenario on
both, in an order that alternates between rounds. It prints the median
requests/s and p50 of each, and AFTER / BEFORE. `crud` needs the
`crud-load` release binary (`cargo build --release -p fhirbox-bench`).
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402
import search  # noqa: E402

PATIENTS = 2000
IDENTIFIER_SYSTEM = "urn:oid:1.2.3"
IDENTIFIER = ('math.randomseed(os.time())\nrequest = function() return wrk.format("GET", '
              f'"/fhir/Patient?identifier={IDENTIFIER_SYSTEM}|v" .. math.random(0, {PATIENTS - 1})) end\n')


def measure(port, scenario, c, seconds, auth):
    if scenario == "read":
        return bench.wrk(port, "/fhir", c, seconds, bench.lua("read", PATIENTS), auth)
    if scenario == "identifier":
        return bench.wrk(port, "/fhir", c, seconds, IDENTIFIER, auth)
    if scenario == "upsert":
        return bench.wrk(port, "/fhir", c, seconds, search.upsert_script("/fhir"), auth)
    if scenario == "create":
        return bench.wrk(port, "/fhir", c, seconds, bench.lua("create", PATIENTS), auth)
    if scenario == "crud":
        return bench.crud(port, c, seconds, auth)
    raise ValueError(scenario)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--scenarios", default="read,identifier,create,crud")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    scenarios = args.scenarios.split(",")
    auth = bench.basic(("root", bench.ROOT_SECRET))
    work = tempfile.mkdtemp()
    servers = {}
    try:
        for name, binary, port in (("before", args.before, 18501), ("after", args.after, 18502)):
            env = dict(os.environ, BOX_DB_URL=f"sqlite:{work}/{name}.db", BOX_ROOT_CLIENT_SECRET=bench.ROOT_SECRET,
                       RUST_LOG="warn", BOX_WEB_PORT=str(port))
            env.pop("BOX_VAULT_CONFIG", None)
            servers[name] = bench.Server(name, [binary], env, port)
            bench.seed(port, PATIENTS, auth, identifier_system=IDENTIFIER_SYSTEM)
        figures = {}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for c in concurrency:
                for scenario in scenarios:
                    for name in order:
                        out = measure(servers[name].port, scenario, c, args.seconds, auth)
                        figures.setdefault((scenario, c, name), []).append(out)
    finally:
        for server in servers.values():
            server.stop()
    print("| scenario | c | before req/s | after req/s | after / before | before p50 ms | after p50 ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for c in concurrency:
            rps = {n: statistics.median(x["rps"] for x in figures[(scenario, c, n)]) for n in ("before", "after")}
            p50 = {n: statistics.median(x["p50_ms"] or 0 for x in figures[(scenario, c, n)]) for n in ("before", "after")}
            errors = sum(x["errors"] for n in ("before", "after") for x in figures[(scenario, c, n)])
            ratio = rps["after"] / rps["before"] if rps["before"] else float("nan")
            print(f"| {scenario} | {c} | {rps['before']:.0f} | {rps['after']:.0f} | {ratio:.2f} | "
                  f"{p50['before']:.3f} | {p50['after']:.3f} | {errors} |")


if __name__ == "__main__":
    main()
