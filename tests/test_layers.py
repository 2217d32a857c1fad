"""The layering's runtime half: what `make lint` (import-linter) cannot see.

The server image installs the wheel without the operator's dependencies, so importing the
contracts module must load nothing outside the standard library, not even through
`modelship/__init__.py`. Checked in a fresh interpreter, where nothing is imported yet.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_contracts_import_the_standard_library_only() -> None:
    code = "import json, sys; import modelship.contracts; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    foreign = sorted(m for m in loaded
                     if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "modelship"
                     and not m.startswith("_"))
    assert foreign == []
    assert {m for m in loaded if m.startswith("modelship")} == {"modelship", "modelship.contracts"}


def test_the_server_serves_on_the_contract_ports() -> None:
    from modelship import contracts
    from modelship_server.cli import build_parser

    args = build_parser().parse_args(["--model-repository", "/nonexistent"])
    assert (args.http_port, args.grpc_port, args.metrics_port) == (
        contracts.HTTP_PORT, contracts.GRPC_PORT, contracts.METRICS_PORT) == (8000, 8001, 8002)
