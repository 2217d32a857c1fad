"""`modelship render` (pydantic) refuses the same specs as the API server, naming the field."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from invalid_specs import INVALID, VALID, manifest
from modelship.api.v1alpha1 import ModelService
from modelship.api.errors import format_validation_error


@pytest.mark.parametrize(("spec", "field", "words"), [pytest.param(s, f, w, id=i) for i, s, f, w in INVALID])
def test_pydantic_refuses_and_names_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        ModelService.from_body(manifest("m", spec))
    lines = format_validation_error(caught.value)
    assert any(field in line for line in lines), lines


def test_the_valid_base_is_valid() -> None:
    ModelService.from_body(manifest("m", VALID))


@pytest.mark.parametrize("name", ["Upper", "a" * 53, "1starts-with-digit", "has_underscore"])
def test_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="metadata.name must be a DNS-1035 label"):
        ModelService.from_body(manifest(name, VALID))
