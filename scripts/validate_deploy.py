#!/usr/bin/env python3
"""Offline validation of fhirbox's deployment artifacts.

- Every manifest in deploy/kubernetes and every document the Helm chart renders
  (default values and each deploy/helm/fhirbox/ci/*-values.yaml) is validated
  against the Kubernetes OpenAPI schemas of one named Kubernetes version
  (kubernetes-validate, strict: unknown fields are errors), and every
  SecretProviderClass against deploy/schemas/secretproviderclass.schema.json.
- Chart rules: replicaCount > 1 without PostgreSQL must fail to render; no
  secret is ever mounted with subPath (a subPath mount never updates).
- Each vault-config.json shipped in a ConfigMap passes `fhirbox vault check`
  with the files it names in place.
- The Dockerfile is multi-stage, ends as a numeric non-root user, exposes 8080,
  has no HEALTHCHECK, and copies every workspace member's Cargo.toml into its
  dependency layer before the first cargo build.
Exits non-zero on the first class of failure, printing every problem found.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
problems = []


def problem(text):
    problems.append(text)
    print("FAIL:", text)


def documents(text, source):
    for doc in yaml.safe_load_all(text):
        if doc:
            yield source, doc


def walk(value):
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def validate_docs(docs, version, spc_schema):
    kinds = {}
    for source, doc in docs:
        kind = doc.get("kind", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
        name = f"{source}: {kind}/{doc.get('metadata', {}).get('name', '?')}"
        if kind == "Kustomization":
            continue
        if kind == "SecretProviderClass":
            try:
                jsonschema.validate(doc, spc_schema)
                objects = yaml.safe_load(doc["spec"]["parameters"]["objects"])
                for o in objects:
                    for key in ("objectName", "secretPath", "secretKey") if doc["spec"]["provider"] == "vault" else ("objectName",):
                        if not isinstance(o.get(key), str) or not o[key]:
                            problem(f"{name}: objects entry {o} lacks {key}")
            except jsonschema.ValidationError as e:
                problem(f"{name}: {e.message} at {list(e.absolute_path)}")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problem(f"{name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except Exception as e:  # schema missing for a kind we did not expect
            problem(f"{name}: {type(e).__name__}: {e}")
        for obj in walk(doc):
            if "subPath" in obj or "subPathExpr" in obj:
                problem(f"{name}: a volumeMount uses subPath; secret and config mounts must stay updatable")
    return kinds


def render(helm_render, values=None):
    cmd = [helm_render, "--name", "fhirbox"]
    if values:
        cmd += ["-f", values]
    cmd.append(os.path.join(ROOT, "deploy/helm/fhirbox"))
    return subprocess.run(cmd, capture_output=True, text=True)


def check_vault_configs(docs, fhirbox):
    checked = 0
    for source, doc in docs:
        if doc.get("kind") != "ConfigMap" or "vault-config.json" not in doc.get("data", {}):
            continue
        config = json.loads(doc["data"]["vault-config.json"])
        with tempfile.TemporaryDirectory() as tmp:
            # Stand the files up under a scratch root, keeping every path's shape.
            for entry in config["secret"].values():
                real = os.path.join(tmp, entry["path"].lstrip("/"))
                os.makedirs(os.path.dirname(real), exist_ok=True)
                with open(real, "w") as f:
                    f.write("ci-placeholder-value\n")
                entry["path"] = real
            path = os.path.join(tmp, "vault-config.json")
            with open(path, "w") as f:
                json.dump(config, f)
            run = subprocess.run([fhirbox, "vault", "check", "--config", path], capture_output=True, text=True)
            if run.returncode != 0:
                problem(f"{source}: vault-config.json fails `fhirbox vault check`:\n{run.stdout}{run.stderr}")
            elif "ci-placeholder-value" in run.stdout + run.stderr:
                problem(f"{source}: `fhirbox vault check` printed a secret value")
            checked += 1
    return checked


def check_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    stages = re.findall(r"(?im)^FROM\s+\S+", text)
    if len(stages) < 2:
        problem("Dockerfile: expected a multi-stage build")
    final = text[text.lower().rfind("\nfrom "):]
    users = re.findall(r"(?im)^USER\s+(\S+)", final)
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
        problem(f"Dockerfile: the final stage must run as a numeric non-root USER, found {users}")
    if re.search(r"(?im)^HEALTHCHECK", text):
        problem("Dockerfile: no HEALTHCHECK (Kubernetes probes do that)")
    if not re.search(r"(?im)^EXPOSE\s+8080\b", final):
        problem("Dockerfile: the final stage must EXPOSE 8080")
    if not os.path.exists(os.path.join(ROOT, ".dockerignore")):
        problem(".dockerignore is missing")
    # The dependency layer builds the workspace from its manifests alone: every member's
    # Cargo.toml must be copied in before the first `cargo build`.
    first_build = text.find("cargo build")
    workspace = open(os.path.join(ROOT, "Cargo.toml")).read()
    members = re.search(r"(?m)^members\s*=\s*\[([^\]]*)\]", workspace)
    for member in re.findall(r'"([^"]+)"', members.group(1) if members else ""):
        copy = re.search(rf"(?m)^COPY\s+{re.escape(member)}/Cargo\.toml\s", text)
        if not copy or copy.start() > first_build:
            problem(f"Dockerfile: the dependency layer does not copy {member}/Cargo.toml before the first cargo build")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--helm-render", required=True)
    parser.add_argument("--fhirbox", required=True)
    parser.add_argument("--kubernetes-version", default="1.30.0")
    args = parser.parse_args()
    spc_schema = json.load(open(os.path.join(ROOT, "deploy/schemas/secretproviderclass.schema.json")))

    plain = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        plain += list(documents(open(path).read(), os.path.relpath(path, ROOT)))
    kinds = validate_docs(plain, args.kubernetes_version, spc_schema)
    print(f"deploy/kubernetes: {sum(kinds.values())} documents {kinds}")
    for needed in ("ServiceAccount", "SecretProviderClass", "ConfigMap", "Deployment", "Service"):
        if needed not in kinds:
            problem(f"deploy/kubernetes lacks a {needed}")

    rendered_all = []
    cases = [None] + sorted(glob.glob(os.path.join(ROOT, "deploy/helm/fhirbox/ci/*-values.yaml")))
    for values in cases:
        label = os.path.relpath(values, ROOT) if values else "default values"
        out = render(args.helm_render, values)
        if values and os.path.basename(values).startswith("invalid-"):
            if out.returncode == 0 or "needs database.type=postgres" not in out.stderr:
                problem(f"chart with {label} must fail to render with a clear message; got rc={out.returncode} {out.stderr}")
            else:
                print(f"chart with {label}: refused as expected ({out.stderr.strip()})")
            continue
        if out.returncode != 0:
            problem(f"chart with {label} does not render: {out.stderr}")
            continue
        docs = list(documents(out.stdout, f"helm ({label})"))
        kinds = validate_docs(docs, args.kubernetes_version, spc_schema)
        print(f"chart with {label}: {len(docs)} documents {kinds}")
        rendered_all += docs

    checked = check_vault_configs(plain + rendered_all, args.fhirbox)
    print(f"vault configs passing `fhirbox vault check`: {checked}")
    if checked < 2:
        problem("expected vault configs from both the plain manifests and the chart")
    check_dockerfile()

    if problems:
        print(f"{len(problems)} problem(s)")
        sys.exit(1)
    print(f"deployment artifacts valid against Kubernetes {args.kubernetes_version}")


if __name__ == "__main__":
    main()
