#!/usr/bin/env python3
"""Validate Kubernetes manifests offline.

Built-in kinds are checked by kubernetes-validate (PyPI; it bundles the
Kubernetes OpenAPI schemas as JSON schemas) in strict mode, which also rejects
unknown fields. Custom resources are checked against the JSON schemas in
k8s/schemas/ (named GROUP_VERSION_KIND.json). A document of a kind neither
knows fails. Prints one line per document; exits 1 on any failure.

Usage: validate.py [--kubernetes-version X.Y.Z] FILE.yaml...
"""
import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent / "k8s" / "schemas"


def crd_schema(doc):
    api = doc.get("apiVersion", "")
    if "/" not in api:
        return None
    group, version = api.split("/", 1)
    path = SCHEMAS / f"{group}_{version}_{doc.get('kind', '').lower()}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes-version", default=kubernetes_validate.latest_version())
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failed = 0
    for name in args.files:
        with open(name, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"FAIL {name}: no documents")
            failed += 1
        for doc in docs:
            what = f"{name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            schema = crd_schema(doc)
            try:
                if schema is not None:
                    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
                    print(f"ok   {what} (CRD schema {doc['apiVersion']})")
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                    print(f"ok   {what} (Kubernetes {args.kubernetes_version}, strict)")
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"FAIL {what}: no schema ({e})")
                failed += 1
            except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
                path = "/".join(str(p) for p in e.absolute_path)
                print(f"FAIL {what}: {e.message} at {path or '.'}")
                failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
