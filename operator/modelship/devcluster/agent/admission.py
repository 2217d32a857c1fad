"""A kubelet's resource admission: a pod bound to a node that cannot hold it (bound by hand, past
the scheduler) is rejected with phase Failed and reason OutOf<resource>, like a kubelet does.

Requests only, as the scheduler counts them: the sum over containers, or the largest init
container when that is more (init containers run one at a time, before the others).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Iterable, Mapping

_SUFFIXES: dict[str, int | Decimal] = {
    "": 1, "m": Decimal("0.001"), "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15,
    "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("100m", "2", "1.5Gi", 4) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2)])


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    spec = pod.get("spec", {})
    total: dict[str, Decimal] = {"pods": Decimal(1)}
    for container in spec.get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = total.get(name, Decimal(0)) + quantity(value)
    for container in spec.get("initContainers") or []:
        for name, value in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total.get(name, Decimal(0)), quantity(value))
    return total


def admit(pod: Mapping[str, Any], running: Iterable[Mapping[str, Any]],
          allocatable: Mapping[str, str]) -> tuple[str, str] | None:
    """None when the pod fits beside `running`; else (reason, message) for its status."""
    wanted = pod_requests(pod)
    used: dict[str, Decimal] = {}
    for other in running:
        for name, value in pod_requests(other).items():
            used[name] = used.get(name, Decimal(0)) + value
    for name, amount in sorted(wanted.items()):
        if amount <= 0:
            continue
        capacity = quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if used.get(name, Decimal(0)) + amount > capacity:
            reason = "OutOfpods" if name == "pods" else f"OutOf{name}"
            return reason, (f"Pod was rejected: Node didn't have enough resource: {name}, requested: "
                            f"{_show(amount)}, used: {_show(used.get(name, Decimal(0)))}, capacity: {_show(capacity)}")
    return None


def _show(value: Decimal) -> str:
    return format(value.normalize(), "f")
