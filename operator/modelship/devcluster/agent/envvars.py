"""A container's environment and the kubelet's `$(VAR)` expansion, as pure functions.

Order as in the kubelet: envFrom sources (later ones win), then `env` entries, each of which
may refer to variables defined before it; command and args are expanded with the result.
Lookups of ConfigMaps, Secrets and pod fields are passed in, so the decisions test on their own.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

Lookup = Callable[[str, str, str], "str | None"]  # (kind, name, key) -> value, None when absent


class ConfigError(Exception):
    """The container cannot be configured (a missing key, an unsupported field): shown as
    CreateContainerConfigError, and retried, like a kubelet."""


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` becomes its value when defined and stays as written otherwise; `$$` escapes `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


_LABEL_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str, *, pod_ip: str, host_ip: str) -> str:
    """The downward API's fieldRef values."""
    meta = pod.get("metadata", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_FIELD.match(path)
    if match:
        return meta.get(match.group(1), {}).get(match.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ConfigError(f"fieldRef.fieldPath: expected one of {', '.join(sorted(simple))}, "
                      f"metadata.labels['KEY'] or metadata.annotations['KEY']; got {path!r}")


def container_env(container: Mapping[str, Any], pod: Mapping[str, Any], *, base: Mapping[str, str],
                  lookup: Lookup, lookup_all: Callable[[str, str], "dict[str, str] | None"],
                  pod_ip: str, host_ip: str) -> dict[str, str]:
    """The environment of one container: `base` (PATH, service variables), envFrom, env."""
    env = dict(base)
    name = container.get("name", "?")
    for index, source in enumerate(container.get("envFrom") or []):
        prefix = source.get("prefix", "")
        for kind, field in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(field)
            if ref is None:
                continue
            values = lookup_all(kind, ref.get("name", ""))
            if values is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"containers[{name}].envFrom[{index}].{field}: {kind} "
                                  f"{ref.get('name')!r} not found")
            env.update({prefix + k: v for k, v in values.items()})
    for entry in container.get("env") or []:
        key = entry["name"]
        if "valueFrom" not in entry:
            env[key] = expand(entry.get("value", ""), env)
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            env[key] = field_value(pod, source["fieldRef"].get("fieldPath", ""), pod_ip=pod_ip, host_ip=host_ip)
            continue
        for kind, field in (("configmap", "configMapKeyRef"), ("secret", "secretKeyRef")):
            if field in source:
                ref = source[field]
                value = lookup(kind, ref.get("name", ""), ref.get("key", ""))
                if value is None:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f"containers[{name}].env[{key}].valueFrom.{field}: key "
                                      f"{ref.get('key')!r} of {kind} {ref.get('name')!r} not found")
                env[key] = value
                break
        else:
            raise ConfigError(f"containers[{name}].env[{key}].valueFrom: expected fieldRef, configMapKeyRef "
                              f"or secretKeyRef (the local agent does not support {sorted(source)})")
    return env
