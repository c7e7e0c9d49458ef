#!/usr/bin/env python3
"""fhirbox benchmarks side by side (issue 6). One entry point: bench/run.sh.
`--read-only --db sqlite` runs just the read scenario (the three ways to
authenticate against the no-auth baseline), e.g. before and after a change.

Builds nothing itself (run.sh does); starts the servers, seeds data, drives
load with wrk (Debian package) and bench's own crud-load (for the ordered CRUD
chain), and writes bench/results/latest.{md,json}: date, commit, machine and
every figure. Speeds are reported as ratios against baselines measured in the
same run (the no-auth router, nginx, Helios) because this machine is shared.
"""
import argparse
import base64
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import csi  # noqa: E402

RELEASE = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release")
PG_ADMIN = os.environ.get("FHIRBOX_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")
ROOT_SECRET = "bench-root-secret"
SIGNING_KEY = "bench-signing-key-0123456789abcdef"
LITERAL = ("literal", "bench-literal-secret")
VAULTED = ("vaulted", "bench-vault-secret")
BASELINE = "no auth (baseline)"
BASELINE_AGAIN = "no auth (baseline, again)"
REF = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"},
                     {"url": "http://health-samurai.io/fhir/secret-reference", "valueString": "client-secret"}]}


def basic(user):
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def http(port, method, path, body=None, auth=None, content_type="application/fhir+json", timeout=60):
    headers = {"content-type": content_type}
    if auth:
        headers["authorization"] = auth
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def rss_mib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


class Server:
    def __init__(self, name, cmd, env, port, ready_path="/health/ready", cwd=None):
        self.name, self.port = name, port
        started = time.perf_counter()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        while http(port, "GET", ready_path)[0] != 200:
            if self.proc.poll() is not None or time.perf_counter() - started > 120:
                self.log.seek(0)
                raise RuntimeError(f"{name} did not become ready: {self.log.read()[-2000:].decode(errors='replace')}")
            time.sleep(0.002)
        self.ready_ms = (time.perf_counter() - started) * 1000

    def memory(self):
        return rss_mib(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wrk(port, path, concurrency, seconds, script, auth=None):
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(script)
    lua.close()
    cmd = ["wrk", "--latency", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{seconds}s", "-s", lua.name]
    if auth:
        cmd += ["-H", f"Authorization: {auth}"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
    os.unlink(lua.name)

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": errors}


def lua(kind, n, base="/fhir"):
    patient = '{"resourceType":"Patient","name":[{"family":"Bench","given":["Load"]}],"gender":"female"}'
    if kind == "read":
        return f'math.randomseed(os.time())\nrequest = function() return wrk.format("GET", "{base}/Patient/p" .. math.random(0, {n - 1})) end\n'
    if kind == "create":
        return f'wrk.method = "POST"\nwrk.body = \'{patient}\'\nwrk.headers["Content-Type"] = "application/fhir+json"\nrequest = function() return wrk.format(nil, "{base}/Patient") end\n'
    if kind == "update":
        return ('math.randomseed(os.time())\nwrk.headers["Content-Type"] = "application/fhir+json"\nrequest = function()\n'
                '  local id = "p" .. math.random(0, %d)\n'
                '  return wrk.format("PUT", "%s/Patient/" .. id, nil, '
                '\'{"resourceType":"Patient","id":"\' .. id .. \'","gender":"other"}\')\nend\n') % (n - 1, base)
    if kind == "search":
        return f'request = function() return wrk.format("GET", "{base}/Patient?_count=50") end\n'
    if kind == "transaction":
        entries = ",".join([f'{{"resource":{patient},"request":{{"method":"POST","url":"Patient"}}}}'] * 10)
        bundle = f'{{"resourceType":"Bundle","type":"transaction","entry":[{entries}]}}'
        post_path = base or "/"
        return f'wrk.headers["Content-Type"] = "application/fhir+json"\nrequest = function() return wrk.format("POST", "{post_path}", nil, \'{bundle}\') end\n'
    raise ValueError(kind)


def seed(port, n, auth, base="/fhir", identifier_system=None):
    """Patients p0 … p{n-1}; with `identifier_system`, Patient pN carries the
    identifier `identifier_system|vN`."""
    def patient(i):
        resource = {"resourceType": "Patient", "id": f"p{i}", "name": [{"family": f"Seed{i}"}], "gender": "female"}
        if identifier_system:
            resource["identifier"] = [{"system": identifier_system, "value": f"v{i}"}]
        return resource
    for start in range(0, n, 500):
        entries = [{"resource": patient(i), "request": {"method": "PUT", "url": f"Patient/p{i}"}}
                   for i in range(start, min(n, start + 500))]
        status, body = http(port, "POST", base or "/", {"resourceType": "Bundle", "type": "transaction", "entry": entries}, auth)
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {body[:300]}")


def settle(url):
    """After seeding PostgreSQL, as an operator's database would be a minute
    later (autovacuum): planner statistics and the visibility map. Without
    them a page of a freshly filled table is planned as if it held a few
    rows (a bitmap scan and a sort of every match, not the index in order)."""
    if url.startswith("postgres"):
        subprocess.run(["psql", url, "-qc", "VACUUM ANALYZE"], check=True, capture_output=True)


def fresh_pg(name):
    for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", f"{PG_ADMIN}/postgres", "-qc", sql], check=True, capture_output=True)
    return f"{PG_ADMIN}/{name}"


PROVIDER_DIR = os.path.join(ROOT, "crates/server/tests/oidc-provider")
EXTERNAL_JWT = "Bearer, external RS256 JWT (JWKS)"
EXTERNAL_OPAQUE = "Bearer, external opaque (cached)"


class Provider:
    """The tests' real OpenID provider (npm oidc-provider), for tokens of another issuer."""

    def __init__(self):
        if not os.path.isdir(os.path.join(PROVIDER_DIR, "node_modules", "oidc-provider")):
            subprocess.run(["npm", "ci", "--prefix", PROVIDER_DIR, "--no-audit", "--no-fund"], check=True,
                           stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen(["node", "provider.mjs"], cwd=PROVIDER_DIR, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, TOKEN_TTL="7200"))
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.issuer = json.loads(line)["issuer"]
                break
        else:
            raise RuntimeError("the OpenID provider did not start")

    def token(self, resource):
        req = urllib.request.Request(f"{self.issuer}/token", method="POST",
                                     data=f"grant_type=client_credentials&scope=read&resource={resource}".encode(),
                                     headers={"authorization": basic(("svc", "svc-secret")),
                                              "content-type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return "Bearer " + json.loads(r.read())["access_token"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def external_tokens(port, root, provider):
    """TokenIntrospectors for the provider's JWTs (key set) and opaque tokens, an allow policy
    linked to both, and one token of each kind, used once so reads start from warm caches."""
    for body in ({"resourceType": "TokenIntrospector", "id": "idp", "type": "jwt", "jwt": {"iss": provider.issuer},
                  "jwks_uri": f"{provider.issuer}/jwks"},
                 {"resourceType": "TokenIntrospector", "id": "idp-opaque", "type": "opaque",
                  "introspection_endpoint": {"url": f"{provider.issuer}/token/introspection",
                                             "authorization": basic(("fhirbox", "rs-secret"))}},
                 {"resourceType": "AccessPolicy", "id": "bench-external", "engine": "allow",
                  "link": [{"reference": "TokenIntrospector/idp"}, {"reference": "TokenIntrospector/idp-opaque"}]}):
        assert http(port, "PUT", f"/fhir/{body['resourceType']}/{body['id']}", body, root)[0] in (200, 201)
    tokens = {EXTERNAL_JWT: provider.token("urn:fhirbox:jwt"), EXTERNAL_OPAQUE: provider.token("urn:fhirbox:opaque")}
    for header in tokens.values():
        assert http(port, "GET", "/fhir/Patient/p0", auth=header)[0] == 200
    return tokens


def run_fhirbox(db, cfg, work, results, footprint):
    mount = os.path.join(work, f"{db}-secrets")
    csi.write(mount, {"client-secret": VAULTED[1]})
    vault_config = os.path.join(work, f"{db}-vault.json")
    with open(vault_config, "w") as f:
        json.dump({"secret": {"client-secret": {"path": os.path.join(mount, "client-secret"), "scope": ["Client/vaulted"]}}}, f)
    url = f"sqlite:{work}/{db}/fhirbox.db" if db == "sqlite" else fresh_pg("fhirbox_bench")
    env = dict(os.environ, BOX_DB_URL=url, BOX_VAULT_CONFIG=vault_config, BOX_ROOT_CLIENT_SECRET=ROOT_SECRET,
               BOX_SECURITY_AUTH_KEYS_SECRET=SIGNING_KEY, RUST_LOG="warn")
    server = Server(f"fhirbox-{db}", [f"{RELEASE}/fhirbox"], dict(env, BOX_WEB_PORT="18401"), 18401)
    fp = {"start_to_ready_ms": round(server.ready_ms, 1), "idle_rss_mib": round(server.memory()["rss"], 1)}
    root = basic(("root", ROOT_SECRET))
    seed(server.port, cfg["patients"], root)
    settle(url)
    for body in ({"resourceType": "Client", "id": LITERAL[0], "secret": LITERAL[1], "grant_types": ["basic", "client_credentials"]},
                 {"resourceType": "Client", "id": VAULTED[0], "_secret": REF, "grant_types": ["basic"]},
                 {"resourceType": "AccessPolicy", "id": "bench", "engine": "allow",
                  "link": [{"reference": "Client/literal"}, {"reference": "Client/vaulted"}]}):
        assert http(server.port, "PUT", f"/fhir/{body['resourceType']}/{body['id']}", body, root)[0] in (200, 201)
    status, token = http(server.port, "POST", "/auth/token", b"grant_type=client_credentials", basic(LITERAL),
                         "application/x-www-form-urlencoded")
    bearer = "Bearer " + json.loads(token)["access_token"]
    provider = Provider()
    external = external_tokens(server.port, root, provider)
    baseline = Server(f"baseline-{db}", [f"{RELEASE}/baseline-server"], dict(env, BOX_WEB_PORT="18402"), 18402)
    n = cfg["patients"]
    # The baseline runs before and after the authenticated reads; ratios divide by the mean
    # of the two, so drift on this shared machine during the runs cancels out.
    reads = [(BASELINE, baseline.port, None), ("Basic, vault secret", server.port, basic(VAULTED)),
             ("Basic, literal secret", server.port, basic(LITERAL)), ("Bearer token", server.port, bearer),
             (EXTERNAL_JWT, server.port, external[EXTERNAL_JWT]), (EXTERNAL_OPAQUE, server.port, external[EXTERNAL_OPAQUE]),
             (BASELINE_AGAIN, baseline.port, None)]
    for c in cfg["concurrency"]:
        for auth_name, port, header in reads:
            r = wrk(port, "/", c, cfg["seconds"], lua("read", n), header)
            results.append(dict(server="fhirbox", db=db, scenario="read", auth=auth_name, concurrency=c, **r))
    fp["rss_after_read_mib"] = round(server.memory()["rss"], 1)
    auth = basic(LITERAL)
    for c in ([] if cfg["read_only"] else cfg["concurrency"]):
        for kind in ("create", "update", "search", "transaction"):
            r = wrk(server.port, "/", c, cfg["seconds"], lua(kind, n), auth)
            results.append(dict(server="fhirbox", db=db, scenario=kind, auth="Basic, literal secret", concurrency=c, **r))
        r = crud(server.port, c, cfg["seconds"], auth)
        results.append(dict(server="fhirbox", db=db, scenario="crud chain", auth="Basic, literal secret", concurrency=c, **r))
    fp["peak_rss_mib"] = round(server.memory()["peak"], 1)
    footprint[db] = fp
    baseline.stop()
    server.stop()
    provider.stop()


SYNTHEA = os.path.join(ROOT, "crates/server/tests/fixtures/synthea-style-transaction.json")


def synthea_patient():
    """The Patient of the Synthea-shaped fixture (US Core extensions,
    identifiers, narrative): what a real create carries."""
    with open(SYNTHEA) as f:
        bundle = json.load(f)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient = dict(patient)
    patient.pop("id")
    patient.pop("generalPractitioner")
    patient.pop("managingOrganization")
    return patient


def validation_lua(kind, n):
    body = json.dumps(synthea_patient(), separators=(",", ":"))
    assert "]]" not in body
    if kind == "create":
        return (f'wrk.method = "POST"\nwrk.body = [[{body}]]\nwrk.headers["Content-Type"] = "application/fhir+json"\n'
                'request = function() return wrk.format(nil, "/fhir/Patient") end\n')
    head, tail = body[:1], body[1:]
    return ('math.randomseed(os.time())\nwrk.headers["Content-Type"] = "application/fhir+json"\nrequest = function()\n'
            f'  local id = "p" .. math.random(0, {n - 1})\n'
            f'  return wrk.format("PUT", "/fhir/Patient/" .. id, nil, [[{head}"id":"]] .. id .. [[",{tail}]])\nend\n')


def run_validation(db, cfg, work, results):
    """Create and update of a Synthea-sized Patient with BOX_VALIDATION=strict
    and =off: the same binary, two servers on two databases, measured in
    turns (strict, off, off, strict) so drift on this shared machine cancels."""
    servers = {}
    for mode, port in (("strict", 18405), ("off", 18406)):
        url = f"sqlite:{work}/validation-{mode}/fhirbox.db" if db == "sqlite" else fresh_pg(f"fhirbox_bench_{mode}")
        env = dict(os.environ, BOX_DB_URL=url, BOX_ROOT_CLIENT_SECRET=ROOT_SECRET, BOX_VALIDATION=mode,
                   BOX_WEB_PORT=str(port), RUST_LOG="warn")
        servers[mode] = Server(f"fhirbox-{db}-validation-{mode}", [f"{RELEASE}/fhirbox"], env, port)
        seed(port, cfg["patients"], basic(("root", ROOT_SECRET)))
    root = basic(("root", ROOT_SECRET))
    c = 16 if 16 in cfg["concurrency"] else cfg["concurrency"][0]
    for kind in ("create", "update"):
        runs = {"strict": [], "off": []}
        for mode in ("strict", "off", "off", "strict"):
            runs[mode].append(wrk(servers[mode].port, "/", c, cfg["seconds"], validation_lua(kind, cfg["patients"]), root))
        for mode, rs in runs.items():
            merged = {"rps": statistics.mean(r["rps"] for r in rs),
                      "p50_ms": statistics.mean(r["p50_ms"] for r in rs if r["p50_ms"] is not None) if any(r["p50_ms"] is not None for r in rs) else None,
                      "p99_ms": max((r["p99_ms"] for r in rs if r["p99_ms"] is not None), default=None),
                      "errors": sum(r["errors"] for r in rs)}
            results.append(dict(server="fhirbox", db=db, scenario=f"{kind} (Synthea Patient)",
                                auth=f"root, BOX_VALIDATION={mode}", concurrency=c, **merged))
    for server in servers.values():
        server.stop()


def crud(port, users, seconds, auth, base="/fhir"):
    cmd = [f"{RELEASE}/crud-load", f"http://127.0.0.1:{port}{base}", str(users), str(seconds)]
    if auth:
        cmd.append(auth)
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {"rps": out["rps"], "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "errors": out["errors"]}


def run_nginx(cfg, work, results, notes):
    if not shutil.which("nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not nginx:
        notes.append("nginx could not be installed from Debian here; the nginx ceiling is missing.")
        return
    site = os.path.join(work, "nginx")
    os.makedirs(os.path.join(site, "www"), exist_ok=True)
    # nginx workers run as an unprivileged user: they must be able to read the site.
    for path in (work, site, os.path.join(site, "www")):
        os.chmod(path, 0o755)
    with open(os.path.join(site, "www/patient.json"), "w") as f:
        json.dump({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"},
                   "name": [{"family": "Seed1"}], "gender": "female"}, f)
    hashed = subprocess.run(["openssl", "passwd", "-apr1", LITERAL[1]], capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "htpasswd"), "w") as f:
        f.write(f"{LITERAL[0]}:{hashed}\n")
    os.chmod(os.path.join(site, "htpasswd"), 0o644)
    with open(os.path.join(site, "nginx.conf"), "w") as f:
        f.write(f"""daemon off; worker_processes auto; pid {site}/nginx.pid; error_log {site}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {site}; proxy_temp_path {site}; fastcgi_temp_path {site};
  uwsgi_temp_path {site}; scgi_temp_path {site};
  server {{ listen 127.0.0.1:18403; root {site}/www;
    location / {{ auth_basic "fhirbox-bench"; auth_basic_user_file {site}/htpasswd;
      default_type application/fhir+json; try_files /patient.json =404; }}
    location = /ready {{ return 200; }} }} }}
""")
    server = Server("nginx", [nginx, "-c", os.path.join(site, "nginx.conf"), "-p", site], os.environ, 18403, "/ready")
    for c in cfg["concurrency"]:
        r = wrk(18403, "/", c, cfg["seconds"], lua("read", cfg["patients"]), basic(LITERAL))
        results.append(dict(server="nginx (static file, auth_basic)", db="-", scenario="read", auth="Basic (htpasswd)", concurrency=c, **r))
    server.stop()


def helios_binary():
    path = os.path.join(HERE, ".tools/helios/bin/hfs")
    return path if os.path.exists(path) else None


def helios_home(work):
    """A working directory as a real Helios deployment has: HL7's R4
    SearchParameter bundle at data/search-parameters-r4.json (without it
    Helios indexes only a handful of parameters, which flatters its writes
    and hobbles its searches). The bundle is the one fhirbox vendors."""
    home = os.path.join(work, "helios-home")
    os.makedirs(os.path.join(home, "data"), exist_ok=True)
    shutil.copyfile(os.path.join(ROOT, "crates/fhir/definitions/search-parameters.json"),
                    os.path.join(home, "data/search-parameters-r4.json"))
    return home


def run_helios(db, cfg, work, results, notes):
    binary = helios_binary()
    if not binary:
        notes.append("Helios (helios-hfs) is not built in bench/.tools; run `bench/run.sh --with-helios` once to build it (it takes a long time on 2 cores).")
        return
    port = 18404
    env = dict(os.environ, HFS_SERVER_PORT=str(port), HFS_SERVER_HOST="127.0.0.1", HFS_BASE_URL=f"http://127.0.0.1:{port}", RUST_LOG="warn")
    if db == "sqlite":
        env["HFS_DATABASE_URL"] = os.path.join(work, "helios.db")
        env["HFS_STORAGE_BACKEND"] = "sqlite"
    else:
        env["HFS_DATABASE_URL"] = fresh_pg("helios_bench")
        env["HFS_STORAGE_BACKEND"] = "postgres"
    try:
        server = Server(f"helios-{db}", [binary], env, port, "/health", cwd=helios_home(work))
    except RuntimeError as e:
        notes.append(f"Helios on {db} did not start: {str(e)[:300]}")
        return
    try:
        seed(port, cfg["patients"], None, "")
        settle(env["HFS_DATABASE_URL"])
    except RuntimeError as e:
        notes.append(f"Helios on {db}: seeding failed ({str(e)[:200]}); Helios figures skipped")
        server.stop()
        return
    n = cfg["patients"]
    for c in cfg["concurrency"]:
        r = wrk(port, "/", c, cfg["seconds"], lua("read", n, ""))
        results.append(dict(server="helios", db=db, scenario="read", auth="none (Helios default)", concurrency=c, **r))
        for kind in ("create", "search"):
            r = wrk(port, "/", c, cfg["seconds"], lua(kind, n, ""))
            results.append(dict(server="helios", db=db, scenario=kind, auth="none (Helios default)", concurrency=c, **r))
        r = crud(port, c, cfg["seconds"], None, "")
        results.append(dict(server="helios", db=db, scenario="crud chain", auth="none (Helios default)", concurrency=c, **r))
    server.stop()


def micro(quick):
    args = ["cargo", "bench", "-q", "-p", "fhirbox-bench", "--bench", "micro", "--"]
    args += ["--warm-up-time", "0.2", "--measurement-time", "0.3"] if quick else ["--warm-up-time", "1", "--measurement-time", "3"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True).stdout
    figures = {}
    for name, value, unit in re.findall(r"^(\S.*?)\s*\n?\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", out, re.M):
        figures[name.strip()] = float(value) * {"ps": 0.001, "ns": 1, "µs": 1000, "us": 1000, "ms": 1e6}[unit]
    return figures


def rotation(swaps):
    out = subprocess.run([sys.executable, os.path.join(HERE, "rotation-latency.py"), str(swaps), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows, columns):
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(f(r) for _, f in columns) + " |")
    return "\n".join(lines)


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def save_report(out_dir, stem, report, md):
    """Writes `stem`.json (every figure) and `stem`.md (the tables) into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(md))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1-minute smoke run")
    parser.add_argument("--read-only", action="store_true",
                        help="only the read scenario: the three ways to authenticate against the no-auth baseline")
    parser.add_argument("--validation-only", action="store_true",
                        help="only create and update with BOX_VALIDATION=strict against =off")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 3; quick 1)")
    parser.add_argument("--concurrency", help="comma-separated connection counts (default 1,16,64; quick 16)")
    parser.add_argument("--out", help="report directory (default bench/results; a --read-only run writes no files unless given)")
    args = parser.parse_args()
    cfg = ({"patients": 1000, "seconds": 1, "concurrency": [16], "swaps": 5} if args.quick
           else {"patients": 10000, "seconds": 3, "concurrency": [1, 16, 64], "swaps": 50})
    if args.seconds:
        cfg["seconds"] = args.seconds
    if args.concurrency:
        cfg["concurrency"] = [int(c) for c in args.concurrency.split(",")]
    cfg["read_only"] = args.read_only
    out_dir = args.out or (None if args.read_only or args.validation_only else os.path.join(HERE, "results"))
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    started = time.time()
    work = tempfile.mkdtemp(prefix="fhirbox-bench-")
    results, footprint, notes = [], {}, []
    rot, micro_ns = {}, {}
    try:
        for db in dbs:
            if not args.validation_only:
                run_fhirbox(db, cfg, work, results, footprint)
            if args.validation_only or not args.read_only:
                run_validation(db, cfg, work, results)
        if not args.quick and not args.read_only and not args.validation_only:
            run_nginx(cfg, work, results, notes)
            for db in dbs:
                run_helios(db, cfg, work, results, notes)
        if not args.read_only and not args.validation_only:
            rot = rotation(cfg["swaps"])
            micro_ns = micro(args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def find(server, db, scenario, c, auth=None):
        for r in results:
            if r["server"] == server and r["db"] == db and r["scenario"] == scenario and r["concurrency"] == c and (auth is None or r["auth"] == auth):
                return r
        return None

    ratios = []
    c_ref = 16 if 16 in cfg["concurrency"] else cfg["concurrency"][0]
    for db in dbs:
        bases = [b for b in (find("fhirbox", db, "read", c_ref, BASELINE), find("fhirbox", db, "read", c_ref, BASELINE_AGAIN)) if b]
        base_rps = statistics.mean(b["rps"] for b in bases) if bases else 0
        for auth in ("Basic, vault secret", "Basic, literal secret", "Bearer token"):
            r = find("fhirbox", db, "read", c_ref, auth)
            if r and base_rps:
                ratios.append({"what": f"{db}: read with {auth} / no-auth baseline (c={c_ref})", "ratio": r["rps"] / base_rps, "target": ">= 0.95" if "vault" in auth else ""})
        for c in cfg["concurrency"]:
            own = find("fhirbox", db, "read", c, "Bearer token")
            for auth, target in ((EXTERNAL_JWT, ">= 0.95"), (EXTERNAL_OPAQUE, ">= 0.9")):
                r = find("fhirbox", db, "read", c, auth)
                if r and own and own["rps"]:
                    ratios.append({"what": f"{db}: read with {auth} / fhirbox's own Bearer token (c={c})", "ratio": r["rps"] / own["rps"], "target": target})
        for kind in ("create", "update"):
            on = find("fhirbox", db, f"{kind} (Synthea Patient)", c_ref, "root, BOX_VALIDATION=strict")
            off = find("fhirbox", db, f"{kind} (Synthea Patient)", c_ref, "root, BOX_VALIDATION=off")
            if on and off and off["rps"]:
                ratios.append({"what": f"{db}: {kind} with validation / without (c={c_ref})", "ratio": on["rps"] / off["rps"], "target": ">= 0.9"})
        nginx = find("nginx (static file, auth_basic)", "-", "read", c_ref)
        r = find("fhirbox", db, "read", c_ref, "Basic, vault secret")
        if nginx and r and nginx["rps"]:
            ratios.append({"what": f"{db}: read with vault Basic / nginx static auth_basic (c={c_ref})", "ratio": r["rps"] / nginx["rps"], "target": ">= 0.5"})
        for scenario in ("read", "create", "search", "crud chain"):
            for c in cfg["concurrency"]:
                h = find("helios", db, scenario, c)
                f = find("fhirbox", db, scenario, c, "Basic, vault secret" if scenario == "read" else None)
                if h and f and h["rps"]:
                    ratios.append({"what": f"{db}: {scenario} fhirbox / Helios (c={c})", "ratio": f["rps"] / h["rps"], "target": "> 1"})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    mem_kib = int(open("/proc/meminfo").readline().split()[1])
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "mode": ("quick" if args.quick else "default") + (", read only" if args.read_only else ""),
        "machine": {"cores": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release()},
        "load_generators": {"wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
                            "crud-load": "bench/src/bin/crud-load.rs (ordered CRUD chain per virtual user)"},
        "config": cfg, "results": results, "ratios": ratios, "footprint": footprint,
        "rotation_latency_ms": rot, "micro_ns_per_op": micro_ns, "notes": notes,
        "elapsed_s": round(time.time() - started, 1),
    }
    md = [f"# fhirbox benchmark results ({report['mode']})", "",
          f"{report['date']}, commit `{commit}`, {report['machine']['cores']} cores, {report['machine']['memory_gib']} GiB, "
          f"kernel {report['machine']['kernel']}; {report['load_generators']['wrk']} on the same machine; "
          f"{cfg['patients']} seeded Patients; {cfg['seconds']} s per run; took {report['elapsed_s']} s.", "",
          "## Ratios (same run)", "", table(ratios, [("comparison", lambda r: r["what"]), ("ratio", lambda r: f"{r['ratio']:.2f}"), ("target", lambda r: r["target"])]), "",
          "## Throughput and latency", "",
          table(results, [("server", lambda r: r["server"]), ("db", lambda r: r["db"]), ("scenario", lambda r: r["scenario"]),
                          ("auth", lambda r: r["auth"]), ("c", lambda r: str(r["concurrency"])), ("req/s", lambda r: f"{r['rps']:.0f}"),
                          ("p50 ms", lambda r: fmt(r["p50_ms"], 2)), ("p99 ms", lambda r: fmt(r["p99_ms"], 2)), ("errors", lambda r: str(r["errors"]))]), "",
          "## Footprint", "",
          table([dict(db=k, **v) for k, v in footprint.items()], [("db", lambda r: r["db"]), ("start to ready ms", lambda r: fmt(r["start_to_ready_ms"])),
                 ("idle RSS MiB", lambda r: fmt(r["idle_rss_mib"])), ("RSS after reads MiB", lambda r: fmt(r["rss_after_read_mib"])), ("peak RSS MiB", lambda r: fmt(r["peak_rss_mib"]))]), ""]
    if rot:
        md += ["## Rotation latency (atomic-writer swap to first 200 with the new value)", "",
               table([dict(mode=k, **v) for k, v in rot.items()], [("mode", lambda r: r["mode"]), ("swaps", lambda r: str(r["swaps"])),
                      ("median ms", lambda r: fmt(r["median_ms"], 2)), ("max ms", lambda r: fmt(r["max_ms"], 2))]), ""]
    if micro_ns:
        md += ["## Micro-benchmarks (criterion, ns/op)", "",
               table([{"name": k, "ns": v} for k, v in micro_ns.items()], [("benchmark", lambda r: r["name"]), ("ns/op", lambda r: f"{r['ns']:.0f}")]), ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if out_dir:
        save_report(out_dir, "latest", report, md)
    print("\n".join(md))
    errors = sum(r["errors"] for r in results)
    if errors:
        print(f"{errors} request errors across scenarios", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
