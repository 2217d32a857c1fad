"""A minimal API-server client for the agent: JSON requests and watches over TLS with a token.

The agent needs a dozen calls, not a client library; this keeps its start fast and its
dependencies to the standard library plus PyYAML (to read the kubeconfig).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Kube:
    host: str
    port: int
    token: str
    context: ssl.SSLContext
    ca_pem: bytes

    @classmethod
    def from_kubeconfig(cls, path: Path) -> "Kube":
        config = yaml.safe_load(Path(path).read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        url = urllib.parse.urlsplit(cluster["server"])
        ca = base64.b64decode(cluster["certificate-authority-data"])
        with tempfile.NamedTemporaryFile(suffix=".crt") as handle:
            handle.write(ca)
            handle.flush()
            context = ssl.create_default_context(cafile=handle.name)
        return cls(url.hostname or "127.0.0.1", url.port or 443, user["token"], context, ca)

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
             timeout: float = 15.0) -> dict[str, Any]:
        connection = self._connection(timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, f"{method} {path}: API server unreachable ({exc})") from exc
        finally:
            connection.close()
        if response.status >= 400:
            raise ApiError(response.status, f"{method} {path}: HTTP {response.status}: {payload[:300].decode(errors='replace')}")
        return json.loads(payload) if payload else {}

    def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version` until the server closes the stream."""
        separator = "&" if "?" in path else "?"
        query = f"{path}{separator}watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}" \
                f"&timeoutSeconds={timeout_seconds}"
        connection = self._connection(timeout_seconds + 15)
        try:
            connection.request("GET", query, headers={"Authorization": f"Bearer {self.token}"})
            response = connection.getresponse()
            if response.status >= 400:
                raise ApiError(response.status, f"watch {path}: HTTP {response.status}: {response.read()[:300]!r}")
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, f"watch {path}: {exc}") from exc
        finally:
            connection.close()
