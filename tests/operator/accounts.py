"""Kubeconfigs for ServiceAccounts of the test plane, so an operator runs with exactly the
rights a chart grants it (never admin)."""

from __future__ import annotations

import base64
import pathlib
from typing import Any

import yaml


def plane_ca(cluster: Any) -> bytes:
    """The plane's CA certificate, PEM."""
    admin = yaml.safe_load(pathlib.Path(cluster.kubeconfig).read_text())
    entry = admin["clusters"][0]["cluster"]
    if entry.get("certificate-authority-data"):
        return base64.b64decode(entry["certificate-authority-data"])
    return pathlib.Path(entry["certificate-authority"]).read_bytes()


def service_account_kubeconfig(cluster: Any, namespace: str, account: str, *, server: str | None = None
                               ) -> dict[str, Any]:
    """A kubeconfig with a fresh token of `namespace/account`; `server` (e.g. a proxy's plain
    http:// URL) replaces the plane's address."""
    token = cluster.kubectl("-n", namespace, "create", "token", account, "--duration=4h").stdout.strip()
    entry: dict[str, Any] = {"server": server} if server else {
        "server": cluster.server, "certificate-authority-data": base64.b64encode(plane_ca(cluster)).decode()}
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "plane", "cluster": entry}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": account}}],
        "current-context": "operator",
    }
