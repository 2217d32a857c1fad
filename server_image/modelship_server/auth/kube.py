"""Calls to the Kubernetes API for TokenReview and SubjectAccessReview.

The server calls with its own ServiceAccount token (re-read each time: kubelet rotates
projected tokens) and trusts the cluster's CA. A call runs on a worker thread with the
standard library's HTTP client: it happens only on a cache miss, so a client library
with its own event loop integration would buy nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeUnavailable(Exception):
    """The API server could not answer a review; the request is refused with 503, not cached."""


@dataclasses.dataclass(frozen=True)
class KubeTarget:
    url: str  # https://host:port
    token_file: Path
    ca_file: Path | None

    @classmethod
    def in_cluster(cls, url: str | None, token_file: Path | None, ca_file: Path | None) -> KubeTarget:
        """Flags win; else the pod's own environment (KUBERNETES_SERVICE_HOST, the mounted token)."""
        if not url:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ValueError("--auth-token-review needs the Kubernetes API: run in a pod, or pass --auth-kube-api URL")
            url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        token_file = token_file or SA_DIR / "token"
        if ca_file is None and (SA_DIR / "ca.crt").exists():
            ca_file = SA_DIR / "ca.crt"
        if not token_file.exists():
            raise ValueError(f"--auth-kube-token-file {token_file} does not exist: the server needs its own "
                             "ServiceAccount token to call TokenReview (automountServiceAccountToken or a projected token)")
        return cls(url.rstrip("/"), token_file, ca_file)


class KubeReviews:
    def __init__(self, target: KubeTarget, timeout_s: float = 5.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.ssl = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a review; its `status`. KubeUnavailable with the reason when the API cannot answer."""
        try:
            token = self.target.token_file.read_text().strip()
        except OSError as exc:
            raise KubeUnavailable(f"cannot read the server's own token {self.target.token_file}: {exc.strerror}") from None
        req = urllib.request.Request(  # noqa: S310 - the API server's https URL, from flags or the pod's env
            self.target.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self.ssl) as r:  # noqa: S310
                doc = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = _message_of(exc)
            raise KubeUnavailable(f"the Kubernetes API answered {exc.code} to {path.rsplit('/', 1)[-1]}"
                                  f"{': ' + detail if detail else ''}") from None
        except (OSError, ValueError) as exc:
            raise KubeUnavailable(f"cannot reach the Kubernetes API at {self.target.url}: {exc}") from None
        status = doc.get("status")
        return status if isinstance(status, dict) else {}

    def token_review(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/apis/authentication.k8s.io/v1/tokenreviews", body)

    def access_review(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", body)


def _message_of(exc: urllib.error.HTTPError) -> str:
    """The `message` of a Kubernetes Status body, or "" (the status code says enough)."""
    try:
        doc = json.loads(exc.read())
    except (OSError, ValueError):
        return ""
    return str(doc.get("message", "")) if isinstance(doc, dict) else ""
