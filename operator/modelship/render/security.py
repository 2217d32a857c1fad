"""What spec.auth and spec.tls add to the serving pod: flags, Secret volumes, and the
token the server reviews callers' tokens with (docs/security.md).

The pod keeps `automountServiceAccountToken: false`; when ServiceAccount tokens are on,
only the server container gets a projected token of the reviewer ServiceAccount, at the
path the server reads by default. That account needs the built-in ClusterRole
system:auth-delegator (create tokenreviews and subjectaccessreviews, nothing else): the
operator does not create the binding, since that would need the right to bind a cluster
role, which a compromised operator could use for any account; a cluster admin binds it once.

The Secrets are mounted `optional`: a missing one lets the pod start, the server exits
with `TLSCertificateInvalid` / `AuthConfigInvalid` naming the file, and that reason reaches
the ModelService's status (status/diagnosis.py); a required mount would leave the pod in
ContainerCreating with the reason only in an Event the operator does not read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelship.api.v1alpha1 import ModelService

API_KEYS_MOUNT = "/etc/modelship/api-keys"
TLS_MOUNT = "/etc/modelship/tls"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path; where the server looks by default
TOKEN_SECONDS = 3600  # kubelet refreshes it at 80 %; the server re-reads it for each review


@dataclasses.dataclass(frozen=True)
class ServerSecurity:
    args: list[str]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    service_account: str | None  # the pod's serviceAccountName, when it reviews tokens
    probe_scheme: str  # HTTPS with TLS: kubelet does not check the certificate, and health needs no client cert


def server_security(msvc: ModelService) -> ServerSecurity:
    spec = msvc.spec
    args: list[str] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    account = None
    auth = spec.auth
    if auth.enabled:
        if auth.api_keys is not None:
            volumes.append({"name": "api-keys", "secret": {"secretName": auth.api_keys.secret_ref.name, "optional": True}})
            mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
            args += ["--auth-api-keys", API_KEYS_MOUNT]
        sa = auth.service_accounts
        if sa is not None:
            account = sa.reviewer_service_account
            args += ["--auth-token-review", "true", "--auth-cache-ttl", str(auth.cache_ttl_seconds)]
            if sa.audiences:
                args += ["--auth-audiences", ",".join(sa.audiences)]
            if sa.allowed:
                args += ["--auth-allowed-service-accounts", ",".join(sa.allowed)]
            if sa.subject_access_review:
                args += ["--auth-access-review", f"{msvc.metadata.namespace}/{msvc.metadata.name}"]
            volumes.append({"name": "reviewer-token", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]}})
            mounts.append({"name": "reviewer-token", "mountPath": TOKEN_MOUNT, "readOnly": True})
    if spec.tls is not None:
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls.secret_ref.name, "optional": True}})
        mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        args += ["--tls-dir", TLS_MOUNT]
        if spec.tls.client_auth:
            args += ["--tls-client-auth", "true"]
    return ServerSecurity(args, volumes, mounts, account, "HTTPS" if spec.tls is not None else "HTTP")
