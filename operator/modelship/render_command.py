"""`modelship render -f FILE`: print the objects the operator would create, no cluster needed.

For GitOps review: the same pure render the operator runs, on the ModelService(s) in FILE
(`-` reads stdin), printed as a YAML stream. A spec the API server would refuse is refused
here too, with the field named, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import pydantic
import yaml

from modelship import api
from modelship.api.errors import format_validation_error

USAGE_ERROR = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", required=True, metavar="FILE",
        help="YAML file with one or more ModelService documents ('-' for stdin)",
    )
    parser.add_argument(
        "--namespace", default=None,
        help="namespace for ModelServices whose metadata has none (default: 'default')",
    )


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.filename == "-" else _read(args.filename)
    except OSError as error:
        print(f"error: cannot read {args.filename}: {error.strerror}", file=sys.stderr)
        return USAGE_ERROR
    return render_text(text, source=args.filename, namespace=args.namespace, out=sys.stdout, err=sys.stderr)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def render_text(text: str, *, source: str, namespace: str | None, out: TextIO, err: TextIO) -> int:
    """Render every ModelService in `text`; print errors (not tracebacks) for bad input."""
    from modelship.api.v1alpha1 import ModelService
    from modelship.render import render_children, render_grpc, render_route
    from modelship.render.route import route_backends, wants_route

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        print(f"error: {source} is not valid YAML: {error}", file=err)
        return USAGE_ERROR
    if not documents:
        print(f"error: {source} holds no documents", file=err)
        return USAGE_ERROR
    rendered: list[dict[str, Any]] = []
    failed = False
    for index, document in enumerate(documents):
        where = f"{source} document {index + 1}"
        if not isinstance(document, dict) or document.get("kind") != api.KIND:
            kind = document.get("kind") if isinstance(document, dict) else type(document).__name__
            print(f"error: {where}: expected kind {api.KIND}, got {kind!r}", file=err)
            failed = True
            continue
        if namespace and not (document.get("metadata") or {}).get("namespace"):
            document.setdefault("metadata", {})["namespace"] = namespace
        try:
            msvc = ModelService.from_body(document)
        except pydantic.ValidationError as error:
            name = (document.get("metadata") or {}).get("name", "?")
            print(f"error: {where} (ModelService {name}) is invalid:", file=err)
            for line in format_validation_error(error):
                print(f"  {line}", file=err)
            failed = True
            continue
        if msvc.spec.optimization.enabled:
            from modelship.render.optimize_job import render_optimize_job

            rendered.append(render_optimize_job(msvc))
        rendered.extend(render_children(msvc).objects)
        if wants_route(msvc):  # as when no canary runs; during one the weights follow its steps
            backends = route_backends(msvc.metadata.name, canary_weight=None, stable_labeled=True)[1]
            rendered += [render_route(msvc, backends), render_grpc(msvc, backends)]
    if failed:
        return USAGE_ERROR
    out.write(
        "# Rendered by `modelship render`. In a cluster the operator also sets a controller\n"
        "# ownerReference to the ModelService on every object. With optimization enabled the\n"
        "# optimize Job runs first; the Deployment shown serves the original until the Job has chosen.\n"
        "# A Canary's HTTPRoute and GRPCRoute (gatewayRef) are shown at stable 100 %, as when no canary runs.\n"
    )
    out.write(yaml.dump_all(rendered, Dumper=_Dumper, sort_keys=False, default_flow_style=False))
    return 0


class _Dumper(yaml.SafeDumper):
    """Readable output: no anchors, multi-line strings (config.pbtxt) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
