#!/usr/bin/env bash
# `make deps-newest`: install the newest versions pyproject.toml allows (no lock, no pins) into a
# throwaway venv, list what differs from the lock, and run the fast tests there. A failure here
# says what `make lock UPGRADE=1` would break, before anyone commits the new lock.
# Usage: hack/deps_newest.sh PYTHON VENV LOCKFILE
set -uo pipefail
python=$1 venv=$2 lock=$3
cd "$(dirname "$0")/.."
rm -rf "$venv"
"$python" -m venv "$venv" || exit 1
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet --upgrade --editable '.[dev]' || { echo "deps-newest: the newest versions do not install" >&2; exit 1; }
echo "::: versions that differ from $lock (locked -> newest)"
"$venv/bin/python" - "$lock" <<'PY'
import sys
from importlib import metadata
sys.path.insert(0, "tests/packaging")
import locks
pins, _ = locks.parse_lock(open(sys.argv[1]).read())
installed = {locks.normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
changed = [(name, sorted({p.version for p in group}), installed[name]) for name, group in sorted(pins.items())
           if name in installed and installed[name] not in {p.version for p in group}]
for name, locked, newest in changed:
    print(f"  {name}: {', '.join(locked)} -> {newest}")
new = sorted(set(installed) - set(pins) - {"modelship", "pip", "setuptools"})
if new:
    print("  not in the lock:", ", ".join(new))
if not changed and not new:
    print("  none: the lock is the newest")
PY
echo "::: fast tests on the newest versions (pytest -m 'not cluster')"
"$venv/bin/pytest" -q -m 'not cluster' -p no:cacheprovider --ignore=tests/packaging
status=$?
if [[ $status == 0 ]]; then
  echo "deps-newest: the fast tests pass on the newest versions; \`make lock UPGRADE=1\` takes them (except what requirements/pins.txt pins)"
else
  echo "deps-newest: the fast tests above FAIL on the newest versions (exit $status); the lock keeps the old ones" >&2
fi
exit $status
