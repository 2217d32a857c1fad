"""A pod's volumes as folders under `<pod dir>/volumes/<name>`, written before containers start.

emptyDir is a folder (medium Memory included: no tmpfs, no size limit); configMap, secret,
downwardAPI and projected volumes (service-account tokens from the TokenRequest API included)
are written as files with their modes, in the kubelet's `..data` layout (`atomicdir`); hostPath
points at the host's path. The launcher then binds each folder at its mountPath inside the
container's private mount namespace. While the pod runs, `sync` rewrites the configMap, secret
and projected volumes whose objects changed (and renews tokens), atomically; a volume some
container mounts with subPath is left as it is, as the kubelet leaves subPath mounts.
Persistent volume claims are not supported: no volume plugin runs here.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from modelship.devcluster.agent import atomicdir
from modelship.devcluster.agent.envvars import ConfigError, field_value
from modelship.devcluster.agent.kube import Kube

log = logging.getLogger("modelship.agent")

TOKEN_SECONDS = 3607
REFRESHED = ("configMap", "secret", "projected")


class MissingObject(Exception):
    """A source object is gone during a refresh: the volume keeps its last content, like a kubelet's."""


def _data(kind: str, obj: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    if kind == "secret":
        out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
    else:
        out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
    return out


def project_keys(data: Mapping[str, bytes], items: list[dict[str, Any]] | None, default_mode: int,
                 where: str) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (content, mode): every key, or just the listed `items` (pure)."""
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    out = {}
    for item in items:
        key = item.get("key", "")
        if key not in data:
            raise ConfigError(f"{where}.items: key {key!r} not found (keys: {', '.join(sorted(data)) or 'none'})")
        out[item.get("path", key)] = (data[key], item.get("mode", default_mode))
    return out


class VolumeWriter:
    """Writes one pod's volumes; `fields` resolves downward-API paths for this pod."""

    def __init__(self, kube: Kube, pod: Mapping[str, Any], pod_dir: Path, *, pod_ip: str, host_ip: str) -> None:
        self.kube = kube
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.root = pod_dir / "volumes"
        self.pod_ip = pod_ip
        self.host_ip = host_ip
        self.tokens: dict[tuple[str, str], str] = {}
        self.refreshing = False

    def materialize(self) -> dict[str, Path]:
        """Every volume of the pod: name -> folder (or host path) to bind."""
        paths = {}
        for volume in self.pod.get("spec", {}).get("volumes") or []:
            paths[volume["name"]] = self._one(volume)
        return paths

    def _one(self, volume: Mapping[str, Any]) -> Path:
        name = volume["name"]
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate",):
                path.mkdir(parents=True, exist_ok=True)
            return path
        target = self.root / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)  # kept across container restarts, like a kubelet
            return target
        atomicdir.write(target, self._files(volume, f"volumes[{name}]", refreshing=False))
        return target

    def _files(self, volume: Mapping[str, Any], where: str, *, refreshing: bool) -> dict[str, tuple[bytes, int]]:
        """The files a configMap, secret, downwardAPI or projected volume shows now."""
        self.refreshing = refreshing
        files: dict[str, tuple[bytes, int]] = {}
        name = volume["name"]
        if "configMap" in volume or "secret" in volume:
            files = self._object_files(volume, where)
        elif "downwardAPI" in volume:
            spec = volume["downwardAPI"]
            files = self._downward(spec.get("items") or [], spec.get("defaultMode", 0o644), where)
        elif "projected" in volume:
            spec = volume["projected"]
            mode = spec.get("defaultMode", 0o644)
            for index, source in enumerate(spec.get("sources") or []):
                files.update(self._projected(name, source, mode, f"{where}.projected.sources[{index}]"))
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ConfigError(f"{where}: volume type {', '.join(kinds)} is not supported by the local node agent "
                              "(supported: emptyDir, configMap, secret, downwardAPI, projected, hostPath)")
        return files

    def sync(self, *, renew_tokens: bool = False) -> list[tuple[str, atomicdir.Change]]:
        """Rewrite the refreshable volumes whose content changed (with `renew_tokens`, with new
        service-account tokens); (volume, change) for each one rewritten. A volume whose object
        is gone, or whose items no longer match, keeps its last content and is logged."""
        if renew_tokens:
            self.tokens.clear()
        changed = []
        for volume in refreshable(self.pod):
            name = volume["name"]
            try:
                files = self._files(volume, f"volumes[{name}]", refreshing=True)
            except MissingObject as exc:
                log.debug("pod %s: volume %s keeps its content: %s", self.pod["metadata"]["name"], name, exc)
                continue
            except ConfigError as exc:
                log.warning("pod %s: volume %s not refreshed: %s", self.pod["metadata"]["name"], name, exc)
                continue
            target = self.root / name
            change = atomicdir.diff(atomicdir.read(target), files)
            if change:
                atomicdir.write(target, files)
                changed.append((name, change))
        return changed

    def _object_files(self, volume: Mapping[str, Any], where: str) -> dict[str, tuple[bytes, int]]:
        kind = "configmap" if "configMap" in volume else "secret"
        spec = volume.get("configMap") or volume.get("secret") or {}
        name = spec.get("name") if kind == "configmap" else spec.get("secretName")
        return self._keys(kind, name or "", spec.get("items"), spec.get("defaultMode", 0o644),
                          bool(spec.get("optional")), where)

    def _keys(self, kind: str, name: str, items: list[dict[str, Any]] | None, mode: int, optional: bool,
              where: str) -> dict[str, tuple[bytes, int]]:
        plural = "configmaps" if kind == "configmap" else "secrets"
        obj = self.kube.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        if obj is None:
            if self.refreshing:
                raise MissingObject(f"{kind} {name!r} not found in namespace {self.namespace}")
            if optional:
                return {}
            raise ConfigError(f"{where}: {kind} {name!r} not found in namespace {self.namespace}")
        return project_keys(_data(kind, obj), items, mode, where)

    def _downward(self, items: list[dict[str, Any]], mode: int, where: str) -> dict[str, tuple[bytes, int]]:
        out = {}
        for item in items:
            if "fieldRef" not in item:
                raise ConfigError(f"{where}.items[{item.get('path')}]: only fieldRef is supported by the local agent")
            value = field_value(self.pod, item["fieldRef"].get("fieldPath", ""), pod_ip=self.pod_ip,
                                host_ip=self.host_ip)
            out[item["path"]] = (value.encode(), item.get("mode", mode))
        return out

    def _projected(self, volume: str, source: Mapping[str, Any], mode: int,
                   where: str) -> dict[str, tuple[bytes, int]]:
        if "serviceAccountToken" in source:
            spec = source["serviceAccountToken"]
            path = spec.get("path", "token")
            if (volume, path) not in self.tokens:  # asked for once, then again only when renewed
                self.tokens[(volume, path)] = self.token(spec)
            return {path: (self.tokens[(volume, path)].encode(), mode)}
        if "configMap" in source:
            spec = source["configMap"]
            return self._keys("configmap", spec.get("name", ""), spec.get("items"), mode,
                              bool(spec.get("optional")), where)
        if "secret" in source:
            spec = source["secret"]
            return self._keys("secret", spec.get("name", ""), spec.get("items"), mode,
                              bool(spec.get("optional")), where)
        if "downwardAPI" in source:
            return self._downward(source["downwardAPI"].get("items") or [], mode, where)
        raise ConfigError(f"{where}: expected serviceAccountToken, configMap, secret or downwardAPI; "
                          f"got {sorted(source)}")

    def token(self, spec: Mapping[str, Any]) -> str:
        """A token bound to this pod from the TokenRequest API, as the kubelet asks for it."""
        meta = self.pod["metadata"]
        account = self.pod.get("spec", {}).get("serviceAccountName") or "default"
        body: dict[str, Any] = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "expirationSeconds": spec.get("expirationSeconds", TOKEN_SECONDS),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }}
        if spec.get("audience"):
            body["spec"]["audiences"] = [spec["audience"]]
        result = self.kube.call("POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token", body)
        return result["status"]["token"]


def refreshable(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The volumes a running pod's sync rewrites (pure): configMap, secret and projected ones
    that no container (init containers included) mounts with subPath; the kubelet does not
    update subPath mounts either, and a bound file must not be removed under its mount."""
    spec = pod.get("spec", {})
    sub_path = {m.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
                for m in c.get("volumeMounts") or [] if m.get("subPath") or m.get("subPathExpr")}
    return [v for v in spec.get("volumes") or [] if any(k in v for k in REFRESHED) and v["name"] not in sub_path]


MountPlan = list[dict[str, Any]]


def mount_plan(container: Mapping[str, Any], volumes: Mapping[str, Path], termination_log: Path,
               *, exists: Callable[[Path], bool] = Path.exists) -> MountPlan:
    """The binds of one container (pure but for `exists`): volume mounts, then the termination log."""
    plan: MountPlan = []
    name = container.get("name", "?")
    for mount in container.get("volumeMounts") or []:
        volume = mount.get("name", "")
        if volume not in volumes:
            raise ConfigError(f"containers[{name}].volumeMounts[{volume}]: no volume named {volume!r} in the pod")
        source = volumes[volume]
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if not exists(source):
                source.mkdir(parents=True, exist_ok=True)
        plan.append({"source": str(source), "target": mount["mountPath"], "readOnly": bool(mount.get("readOnly"))})
    plan.append({"source": str(termination_log),
                 "target": container.get("terminationMessagePath") or "/dev/termination-log", "readOnly": False})
    return plan
