"""JSON schemas for kubeconform, made from a real kube-apiserver's OpenAPI v3 documents.

kubeconform validates offline against one JSON schema file per kind. The API server we start
serves the authoritative definitions (/openapi/v3/<group-version>); each kind's schema is
written with every definition it may reference, and made strict the way upstream's -strict
schemas are (no property outside the schema), so a misspelled field fails validation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

# kubeconform's -schema-location template for the files written here (its KindSuffix is
# "-<first label of the group>-<version>", or "-<version>" for the core group).
TEMPLATE = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def file_name(group: str, version: str, kind: str) -> str:
    suffix = f"-{group.split('.')[0].lower()}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")  # name -> schema
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMAS = ("items", "additionalProperties", "not")


def _convert(schema: Any) -> Any:
    """OpenAPI v3 to JSON schema: refs into `definitions`, int-or-string and nullable spelled out,
    objects closed unless they say they hold unknown fields or arbitrary keys. Walks schemas
    only (a `properties` map holds names, which may be `format` or `$ref` themselves)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _convert(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_convert(sub) for sub in out[key]]
    for key in _SCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = _convert(out[key])
    if isinstance(out.get("$ref"), str):
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/definitions/")
    if out.get("format") == "int-or-string" or out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("format", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def write_schemas(documents: list[dict[str, Any]], folder: Path) -> list[str]:
    """One file per kind the documents define; the file names written."""
    definitions: dict[str, Any] = {}
    for document in documents:
        definitions.update(document.get("components", {}).get("schemas", {}))
    converted = {name: _convert(schema) for name, schema in definitions.items()}
    if _QUANTITY in converted:
        converted[_QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            root = copy.deepcopy(converted[name])
            root["definitions"] = converted
            path = folder / file_name(gvk["group"], gvk["version"], gvk["kind"])
            path.write_text(json.dumps(root))
            written.append(path.name)
    return written
