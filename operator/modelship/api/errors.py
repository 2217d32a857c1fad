"""A pydantic ValidationError as a person reads it: the field's wire path (camelCase, as in
the YAML they wrote), what was wrong and the value given. `modelship render` prints these
lines, and the reconciler writes them into status when the operator cannot serve a spec.
"""

from __future__ import annotations

from typing import Any

import pydantic

from modelship.modeluri import redact_text


def format_validation_error(error: pydantic.ValidationError) -> list[str]:
    """One line per problem: the field's wire path, what was wrong, and the value given."""
    lines = []
    for problem in error.errors():
        path = _wire_path(problem.get("loc", ()))
        message = problem.get("msg", "invalid").removeprefix("Value error, ")
        line = message if not path or message.startswith(path) else f"{path}: {message}"
        if problem.get("type") not in ("value_error", "missing") and "input" in problem:
            given = problem["input"]
            if not isinstance(given, (dict, list)):
                line += redact_text(f" (got {given!r})")  # a URI's userinfo or presigned query
        lines.append(line)
    return lines


def _wire_path(loc: tuple[Any, ...]) -> str:
    from pydantic.alias_generators import to_camel

    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("int", "str", "constrained-str", "function-after[_uri(), constrained-str]") \
                or str(item).startswith(("function-", "constrained-")):
            continue  # pydantic's union-branch labels, not fields
        else:
            parts.append(("." if parts else "") + to_camel(str(item)))
    return "".join(parts)
