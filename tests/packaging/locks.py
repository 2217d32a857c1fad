"""What the lock files under requirements/ must hold, checked without installing anything.

`make lock` runs this after resolving (stdlib only, so it needs no venv), and test_locks.py
runs it on the committed files. The point of the checks: every image installs pinned, hashed
versions; the images run the versions the tests ran (dev.txt); CPU and GPU run one ONNX Runtime.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# lock file -> the extras of pyproject.toml it resolves (what each Dockerfile / make venv installs)
LOCKS: dict[str, tuple[str, ...]] = {
    "dev.txt": ("operator", "server", "dev"),
    "operator.txt": ("operator",),
    "server.txt": ("server",),
    "server-gpu.txt": ("gpu",),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: int


def normalize(name: str) -> str:
    """PEP 503: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> tuple[dict[str, list[Pin]], list[str]]:
    """The pins of a hashed requirements file (a name may appear twice, under different markers),
    and the requirement lines that are not an exact pin."""
    pins: dict[str, list[Pin]] = {}
    loose: list[str] = []
    entries: list[list[str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and entries:
            entries[-1].append(stripped)
        else:
            entries.append([stripped])
    for entry in entries:
        match = _PIN.match(entry[0])
        if match is None:
            loose.append(entry[0])
            continue
        hashes = sum(part.count("--hash=sha256:") for part in entry)
        pin = Pin(normalize(match.group(1)), match.group(3), hashes)
        pins.setdefault(pin.name, []).append(pin)
    return pins, loose


def direct_requirements(pyproject: dict, extras: tuple[str, ...]) -> set[str]:
    """Names the extras ask for directly (the project's own name, as in dev's self-reference, skipped)."""
    project = pyproject["project"]
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    return names - {normalize(project["name"])}


def _requirement_name(requirement: str) -> str:
    return normalize(re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0])


def problems(folder: Path, pyproject_path: Path) -> list[str]:
    """Everything wrong with the locks in `folder`, one readable line each; [] when all hold."""
    pyproject = tomllib.loads(pyproject_path.read_text())
    found: list[str] = []
    locks: dict[str, dict[str, list[Pin]]] = {}
    for name, extras in LOCKS.items():
        path = folder / name
        if not path.is_file():
            found.append(f"{path}: missing (run `make lock`)")
            continue
        pins, loose = parse_lock(path.read_text())
        locks[name] = pins
        found += [f"{name}: {line!r} is not pinned with == (run `make lock`)" for line in loose]
        found += [f"{name}: {p.name}=={p.version} has no --hash (pip --require-hashes would refuse it)"
                  for group in pins.values() for p in group if p.hashes == 0]
        missing = direct_requirements(pyproject, extras) - set(pins)
        if missing:
            found.append(f"{name}: does not hold {sorted(missing)}, which pyproject.toml's extras "
                         f"{list(extras)} ask for (run `make lock`)")
    dev = locks.get("dev.txt", {})
    for name in ("operator.txt", "server.txt", "server-gpu.txt"):
        for package, group in locks.get(name, {}).items():
            if package in dev and {p.version for p in group} != {p.version for p in dev[package]}:
                found.append(f"{name}: {package} {sorted(p.version for p in group)} but dev.txt, which the "
                             f"tests run, has {sorted(p.version for p in dev[package])}")
    cpu = {p.version for p in locks.get("server.txt", {}).get("onnxruntime", [])}
    gpu = {p.version for p in locks.get("server-gpu.txt", {}).get("onnxruntime-gpu", [])}
    if cpu != gpu or len(cpu) != 1:
        found.append(f"onnxruntime {sorted(cpu)} (server.txt) and onnxruntime-gpu {sorted(gpu)} (server-gpu.txt) "
                     "must be one and the same version")
    for name, clash in (("server-gpu.txt", "onnxruntime"), ("server.txt", "onnxruntime-gpu"),
                        ("dev.txt", "onnxruntime-gpu"), ("operator.txt", "onnxruntime")):
        if clash in locks.get(name, {}):
            found.append(f"{name}: must not hold {clash} (onnxruntime and onnxruntime-gpu share one module)")
    return found


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else REPO / "requirements"
    found = problems(folder, REPO / "pyproject.toml")
    for line in found:
        print(line, file=sys.stderr)
    if not found:
        print(f"{folder}: {len(LOCKS)} locks pinned, hashed and consistent")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
