"""Container processes: start one through the launcher, stop its whole process group, and
find every process the agent ever started (for `down` and for a restarted agent).

Each container is a session leader (its own process group), so SIGTERM and SIGKILL reach the
workers it forks. PR_SET_PDEATHSIG kills the leader if the agent dies without cleaning up,
and every process carries MODELSHIP_AGENT_DIR in its environment, so a sweep of /proc finds
what is left even after a SIGKILL of the agent.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

AGENT_DIR_ENV = "MODELSHIP_AGENT_DIR"
POD_UID_ENV = "MODELSHIP_AGENT_POD_UID"


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ContainerProcess:
    """One run of one container."""

    def __init__(self, argv: list[str], env: dict[str, str], *, mounts: list[dict], working_dir: str | None,
                 run_dir: Path, termination_log: Path, log: Path, keep: tuple[str, ...] = ()) -> None:
        """`keep`: folders the command comes from (the image's venv), bound back if a volume hides them."""
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = run_dir / "launch.json"
        spec.write_text(json.dumps({"argv": argv, "mounts": mounts, "workingDir": working_dir,
                                    "terminationLog": str(termination_log), "keep": list(keep)}))
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "modelship.devcluster.agent.launch", str(spec)],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent, cwd=run_dir,
            )
        self.pid = self.popen.pid
        self.started = time.time()

    def poll(self) -> int | None:
        return self.popen.poll()

    def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after `grace` seconds; the exit code (negative: signal)."""
        _signal_group(self.pid, signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=max(grace, 0.0))
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            code = self.popen.wait()
        _signal_group(self.pid, signal.SIGKILL)  # what the leader left behind
        return code

    def reap_group(self) -> None:
        """After the leader exited on its own: nothing of the container outlives it."""
        _signal_group(self.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def processes_with(name: str, value: str) -> list[int]:
    """PIDs whose environment has name=value (root reads every /proc/<pid>/environ)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(agent_dir: Path, *, pod_uid: str | None = None, grace: float = 2.0) -> list[int]:
    """Stop every process started by the agent of `agent_dir` (or just one pod's); the PIDs hit."""
    def targets() -> list[int]:
        pids = processes_with(AGENT_DIR_ENV, str(agent_dir))
        if pod_uid is not None:
            mine = set(processes_with(POD_UID_ENV, pod_uid))
            pids = [p for p in pids if p in mine]
        return pids

    hit = targets()
    _send(hit, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(hit):
        time.sleep(0.05)
    _send(targets(), signal.SIGKILL)
    return hit


def _send(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pids: Iterable[int]) -> bool:
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return True
    return False
