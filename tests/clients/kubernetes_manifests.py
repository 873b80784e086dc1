#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline with `kubernetes-validate` (the Kubernetes OpenAPI schemas, strict:
an unknown field is an error), for tollgate's deploy tests (tests/suite/deploy.rs).

Usage: kubernetes_manifests.py validate FILE VERSION...
         FILE holds the YAML documents `kubectl kustomize` printed; each is validated against the schemas of every
         Kubernetes VERSION (e.g. 1.30.0 1.37.0).
       kubernetes_manifests.py json FILE
         prints the one YAML document in FILE as JSON (for the tests' own checks of files that are not manifests).

`validate` prints one JSON object: {"documents": [...every document as JSON...], "errors": ["VERSION KIND/NAME: what
is wrong", ...], "without_schema": ["API_VERSION KIND/NAME", ...]}. A kind the schemas do not know (a custom
resource such as the Prometheus Operator's ServiceMonitor) is not an error here: it is listed in without_schema, and
the caller decides which may be there and checks those itself. Exits 0 once it has printed that, 2 on bad usage or
a file that is not YAML.
"""

import json
import sys

import kubernetes_validate
import yaml


def name_of(document):
    metadata = document.get("metadata") or {}
    return f"{document.get('kind')}/{metadata.get('name')}"


def validate(path, versions):
    with open(path, encoding="utf-8") as file:
        documents = [document for document in yaml.safe_load_all(file) if document is not None]
    errors = []
    without_schema = []
    for document in documents:
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                without_schema.append(f"{document.get('apiVersion')} {name_of(document)}")
                break
            except kubernetes_validate.ValidationError as error:
                location = ".".join(str(part) for part in error.path)
                errors.append(f"{version} {name_of(document)}: {location}: {error.message}")
    print(json.dumps({"documents": documents, "errors": errors, "without_schema": without_schema}))


def main(arguments):
    if len(arguments) >= 3 and arguments[0] == "validate":
        validate(arguments[1], arguments[2:])
    elif len(arguments) == 2 and arguments[0] == "json":
        with open(arguments[1], encoding="utf-8") as file:
            print(json.dumps(yaml.safe_load(file)))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except yaml.YAMLError as error:
        print(f"not YAML: {error}", file=sys.stderr)
        sys.exit(2)
