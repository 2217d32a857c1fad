"""The `modelship` command: one entry point, one module per subcommand.

Each subcommand lives in the module that owns its concept and exposes two functions,
`configure(parser)` and `run(args) -> int`. This file only wires them together and imports
nothing heavy: subcommand modules keep their heavy imports (ONNX Runtime, tritonclient, the
Kubernetes client) inside `run`, so `modelship --help` and `modelship render` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help). Order is the order `--help` lists them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "modelship.run_command",
        "run the operator: reconcile ModelServices in the cluster of KUBECONFIG or in-cluster",
    ),
    "render": (
        "modelship.render_command",
        "print the objects the operator would create for a ModelService file (no cluster needed)",
    ),
    "demo": (
        "modelship.demo_command",
        "the whole journey on the local cluster: optimize, roll out and query a model for real",
    ),
    "dev-cluster": (
        "modelship.devcluster.command",
        "run a real local Kubernetes control plane (etcd, kube-apiserver, scheduler, kwok)",
    ),
    "bench": (
        "modelship.bench_command",
        "load-test an Open Inference Protocol server (perf_analyzer-style sweep)",
    ),
    "optimize": ("modelship_server.optimize.command", "optimize an ONNX model: candidate variants, accuracy gate, benchmark"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelship",
        description=(
            "modelship takes an ML model from `kubectl apply -f modelservice.yaml` to an "
            "optimized, GPU-scheduled, autoscaled inference service."
        ),
        epilog="Run `modelship <command> --help` for the flags of one command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        _module(module_name).configure(sub)
    return parser


def _module(name: str):  # noqa: ANN202 - a module object
    return importlib.import_module(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A subcommand with flags of its own (a `main(argv)`) gets the rest of the line untouched.
    if argv and argv[0] in SUBCOMMANDS:
        module = _module(SUBCOMMANDS[argv[0]][0])
        if hasattr(module, "main"):
            return int(module.main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
