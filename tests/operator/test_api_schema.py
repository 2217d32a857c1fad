"""The pydantic models and the CRD schema describe the same API.

Two checks: a structural walk (property names, required, enums, bounds, patterns) and a
behavioural one (API-server-style defaulting of the CRD gives the same object as pydantic's
defaults), so a field added to one side and not the other fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from crd_schema import apply_defaults, load_crd, openapi_schema
from modelship.api import v1alpha1

CHECKED_KEYWORDS = ("enum", "minimum", "maximum", "maxLength", "minLength", "maxItems", "pattern")


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        types = sorted(o.get("type") for o in options if "type" in o)
        if types == ["integer", "string"]:
            merged = {"x-int-or-string": True}
            for o in options:
                if "pattern" in o:
                    merged["pattern"] = o["pattern"]
            return merged
        assert len(options) == 1, schema
        inner = _resolve(options[0], defs)
        return {**inner, **{k: v for k, v in schema.items() if k not in ("anyOf", "default", "title")}}
    if "const" in schema:  # a one-value Literal is an enum of one
        schema = {**schema, "enum": [schema["const"]]}
    return schema


def _kind(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string") or schema.get("x-int-or-string"):
        return "int-or-string"
    if "enum" in schema and "type" not in schema:  # pydantic Literal without explicit type
        return type(schema["enum"][0]).__name__.replace("str", "string")
    if schema.get("type") == "object" and "properties" not in schema:
        return "map"
    return schema.get("type", "?")


def _compare(path: str, crd: dict[str, Any], py: dict[str, Any], defs: dict[str, Any], errors: list[str]) -> None:
    py = _resolve(py, defs)
    crd_kind, py_kind = _kind(crd), _kind(py)
    if crd.get("x-kubernetes-preserve-unknown-fields") and py_kind == "map":
        return
    if crd_kind != py_kind:
        errors.append(f"{path}: CRD type {crd_kind}, pydantic type {py_kind}")
        return
    for keyword in CHECKED_KEYWORDS:
        if crd.get(keyword) != py.get(keyword):
            errors.append(f"{path}: {keyword} is {crd.get(keyword)!r} in the CRD, {py.get(keyword)!r} in pydantic")
    if crd_kind == "object":
        crd_props, py_props = crd.get("properties", {}), py.get("properties", {})
        for name in sorted(set(crd_props) ^ set(py_props)):
            side = "CRD" if name in crd_props else "pydantic"
            errors.append(f"{path}.{name}: only in the {side}")
        if set(crd.get("required", [])) != set(py.get("required", [])):
            errors.append(f"{path}: required {sorted(crd.get('required', []))} in the CRD, {sorted(py.get('required', []))} in pydantic")
        for name in sorted(set(crd_props) & set(py_props)):
            _compare(f"{path}.{name}", crd_props[name], py_props[name], defs, errors)
    elif crd_kind == "array":
        _compare(f"{path}[]", crd["items"], py["items"], defs, errors)
    elif crd_kind == "map":
        _compare(f"{path}{{}}", crd["additionalProperties"], py["additionalProperties"], defs, errors)


@pytest.mark.parametrize(
    ("crd_path", "model"),
    [("spec", v1alpha1.ModelServiceSpec), ("status", v1alpha1.ModelServiceStatus)],
)
def test_pydantic_models_mirror_the_crd(crd_path: str, model: type) -> None:
    py_schema = model.model_json_schema(by_alias=True)
    defs = py_schema.get("$defs", {})
    errors: list[str] = []
    _compare(crd_path, openapi_schema()["properties"][crd_path], py_schema, defs, errors)
    assert not errors, "\n".join(errors)


SAMPLES = [
    {"model": {"uri": "https://models.example.com/resnet.onnx", "sha256": "a" * 64}},
    {
        "model": {"uri": "s3://bucket-1/m.onnx", "sha256": "b" * 64, "name": "resnet", "credentials": {"secretName": "s3"}},
        "runtime": "triton",
        "triton": {},
        "resources": {"gpu": {"count": 1}},
        "autoscaling": {"enabled": True, "engine": "hpa"},
        "scheduling": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
    },
    {
        "model": {"uri": "pvc://models/a/b.onnx", "sha256": "c" * 64},
        "networkPolicy": {"enabled": True, "allowFrom": [{"podSelector": {"matchLabels": {"app": "x"}}}]},
        "slo": {"latencyMilliseconds": 50},
    },
]


@pytest.mark.parametrize("spec", SAMPLES)
def test_crd_defaulting_equals_pydantic_defaulting(spec: dict[str, Any]) -> None:
    crd_defaulted = apply_defaults(openapi_schema()["properties"]["spec"], spec)
    py_defaulted = v1alpha1.ModelServiceSpec.model_validate(spec).wire()
    assert py_defaulted == crd_defaulted


def test_crd_names_match_the_api_constants() -> None:
    from modelship import api

    crd = load_crd()
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["names"]["kind"] == api.KIND
    assert crd["spec"]["names"]["shortNames"] == [api.SHORT_NAME]
    assert [v["name"] for v in crd["spec"]["versions"]] == [api.VERSION]
