"""The node agent's volume refresh without a cluster: what changed (pure), which volumes a running
pod refreshes, and the kubelet's `..data` layout on a real folder, read by a concurrent reader
and by the server's own file watcher (the code that reloads API keys and TLS certificates)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modelship.devcluster.agent import atomicdir
from modelship.devcluster.agent.atomicdir import Change, diff
from modelship.devcluster.agent.envvars import ConfigError
from modelship.devcluster.agent.volumes import refreshable
from modelship_server.filewatch import signature, visible_files


def test_diff_names_added_removed_and_modified_paths_by_content_and_mode():
    current = {"a": (b"1", 0o644), "b": (b"2", 0o644), "c": (b"3", 0o644)}
    desired = {"a": (b"1", 0o644), "b": (b"2", 0o400), "c": (b"4", 0o644), "d": (b"5", 0o644)}
    change = diff(current, desired)
    assert change == Change(added=("d",), removed=(), modified=("b", "c"))
    assert change and change.describe() == "added d; changed b, c"
    assert diff(desired, {}) == Change(removed=("a", "b", "c", "d"))
    assert not diff(current, dict(current))
    assert diff(current, dict(current)).describe() == "unchanged"
    assert not diff({"a": (b"1", 0o100644)}, {"a": (b"1", 0o644)})  # only the permission bits count


def test_top_level_entries_and_stale_ones():
    assert atomicdir.top_entries(["tls.crt", "conf/app.yaml", "conf/more.yaml"]) == {"tls.crt", "conf"}
    existing = ["..data", "..2026_01_01_00_00_00.1.x", "tls.crt", "old-key", "conf"]
    assert atomicdir.stale_entries(existing, ["tls.crt", "conf/app.yaml"]) == {"old-key"}


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../up", "a/../../b", "..data", "..hidden"])
def test_paths_that_would_leave_the_volume_or_shadow_the_layout_are_refused(path):
    with pytest.raises(ConfigError, match="must be relative, without '..' and not starting with '..'"):
        atomicdir.check_path(path)


def test_refreshable_volumes_are_config_maps_secrets_and_projected_ones_not_mounted_with_sub_path():
    pod = {"spec": {
        "volumes": [
            {"name": "keys", "secret": {"secretName": "k"}},
            {"name": "conf", "configMap": {"name": "c"}},
            {"name": "api", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            {"name": "one-file", "configMap": {"name": "c"}},
            {"name": "init-file", "secret": {"secretName": "k"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "labels", "downwardAPI": {"items": []}},
            {"name": "host", "hostPath": {"path": "/tmp"}},
        ],
        "initContainers": [{"name": "i", "volumeMounts": [{"name": "init-file", "mountPath": "/x", "subPath": "a"}]}],
        "containers": [{"name": "c", "volumeMounts": [{"name": "keys", "mountPath": "/k"},
                                                      {"name": "one-file", "mountPath": "/f", "subPath": "a.yaml"}]}],
    }}
    assert [v["name"] for v in refreshable(pod)] == ["keys", "conf", "api"]
    assert refreshable({"spec": {}}) == []


def test_write_lays_out_data_links_and_swaps_on_update(tmp_path: Path):
    root = tmp_path / "tls"
    atomicdir.write(root, {"tls.crt": (b"cert-1", 0o644), "tls.key": (b"key-1", 0o600), "conf/a": (b"x", 0o644)})
    inode = root.stat().st_ino
    first = os.readlink(root / "..data")
    assert first.startswith("..") and (root / first).is_dir()
    assert os.readlink(root / "tls.crt") == "..data/tls.crt" and os.readlink(root / "conf") == "..data/conf"
    assert (root / "tls.key").read_bytes() == b"key-1" and oct((root / "tls.key").stat().st_mode & 0o777) == "0o600"
    assert atomicdir.read(root) == {"tls.crt": (b"cert-1", 0o644), "tls.key": (b"key-1", 0o600),
                                    "conf/a": (b"x", 0o644)}

    atomicdir.write(root, {"tls.crt": (b"cert-2", 0o644), "ca.crt": (b"ca", 0o644)})
    assert root.stat().st_ino == inode  # the folder a container has bound stays the same folder
    assert os.readlink(root / "..data") != first and not (root / first).exists()  # old set removed
    assert sorted(os.listdir(root)) == sorted(["..data", os.readlink(root / "..data"), "tls.crt", "ca.crt"])
    assert (root / "tls.crt").read_bytes() == b"cert-2"
    assert atomicdir.read(root) == {"tls.crt": (b"cert-2", 0o644), "ca.crt": (b"ca", 0o644)}


def test_write_over_a_plain_folder_replaces_its_entries(tmp_path: Path):
    root = tmp_path / "v"
    (root / "stale").mkdir(parents=True)
    (root / "key").write_text("plain")
    assert atomicdir.read(root) == {}
    atomicdir.write(root, {"key": (b"linked", 0o644)})
    assert os.readlink(root / "key") == "..data/key" and not (root / "stale").exists()


def test_a_reader_never_sees_a_missing_file_or_a_mixed_set_while_updates_swap(tmp_path: Path):
    root = tmp_path / "tls"
    atomicdir.write(root, {"tls.crt": (b"0", 0o644), "tls.key": (b"0", 0o600)})
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def through_the_link() -> None:
        """Open tls.crt through its per-key link, as a container does. The set the link resolved to
        may be removed mid-open by the swap after it (kubelet's layout has the same window); a second
        open then resolves the new set. Missing twice in a row is a missing file."""
        try:
            (root / "tls.crt").read_bytes()
        except FileNotFoundError:
            (root / "tls.crt").read_bytes()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                through_the_link()
                data = os.path.realpath(root / "..data")  # one set, as a consistent reader takes it
                crt, key = (Path(data) / "tls.crt").read_bytes(), (Path(data) / "tls.key").read_bytes()
            except FileNotFoundError as exc:
                if not Path(exc.filename or "").parent.name.startswith(".."):  # a set removed after we resolved it
                    problems.append(f"missing: {exc}")
                continue
            if crt != key:
                problems.append(f"mixed set: crt {crt!r} key {key!r}")
            reads += 1
            reading.set()

    reading = threading.Event()
    thread = threading.Thread(target=reader)
    thread.start()
    assert reading.wait(30), "the reader never read"  # the writes below race a reader that is running
    try:
        for generation in range(1, 200):
            value = str(generation).encode()
            atomicdir.write(root, {"tls.crt": (value, 0o644), "tls.key": (value, 0o600)})
    finally:
        done.set()
        thread.join(30)
    assert not problems, problems[:5]
    assert reads > 0
    assert (root / "tls.key").read_bytes() == b"199"


def test_the_servers_file_watcher_sees_the_swap_and_not_the_layouts_entries(tmp_path: Path):
    root = tmp_path / "api-keys"
    atomicdir.write(root, {"ci": (b"key-a\n", 0o644)})
    assert [p.name for p in visible_files(root)] == ["ci"]
    before = signature([root])
    atomicdir.write(root, {"ci": (b"key-b\n", 0o644)})
    assert signature([root]) != before
    assert [p.read_text() for p in visible_files(root)] == ["key-b\n"]
