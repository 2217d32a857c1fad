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


def test_every_outcome_the_server_counts_is_a_contract_label() -> None:
    """The autoscaler sums DEMAND_OUTCOMES; an outcome the contract does not list would be
    neither demand nor a known client mistake."""
    from modelship import contracts
    from modelship_server import errors

    classes, queue = set(), [errors.ServingError]
    while queue:
        cls = queue.pop()
        classes.add(cls)
        queue.extend(cls.__subclasses__())
    emitted = {cls.outcome for cls in classes} | {"success"}  # dataplane.py counts a success itself
    assert emitted <= set(contracts.OUTCOMES), emitted - set(contracts.OUTCOMES)
    assert set(contracts.DEMAND_OUTCOMES) <= set(contracts.OUTCOMES)
    assert len(classes) > 5  # the server's error classes were found
