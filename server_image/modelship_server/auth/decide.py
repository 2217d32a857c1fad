"""Pure decisions of authentication: what a header holds, what a review answer means.

Nothing here does I/O, so every rule is unit-tested on its own. A token never appears in
a message: messages name what was wrong ("no credential", "not accepted"), never the value.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable

# Health endpoints stay open so kubelet probes work without credentials.
OPEN_HTTP_PATHS = frozenset((("v2", "health", "live"), ("v2", "health", "ready")))
OPEN_GRPC_METHODS = frozenset(("ServerLive", "ServerReady"))

ALLOWED, UNAUTHENTICATED, FORBIDDEN, UNAVAILABLE = "allowed", "unauthenticated", "forbidden", "unavailable"
HTTP_STATUS = {UNAUTHENTICATED: 401, FORBIDDEN: 403, UNAVAILABLE: 503}


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one credential: `outcome` is one of the four constants above."""

    outcome: str
    message: str = ""
    method: str = ""  # "apikey" or "token": what decided (for metrics)

    @property
    def allowed(self) -> bool:
        return self.outcome == ALLOWED

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.outcome, 200)


NO_CREDENTIAL = Verdict(UNAUTHENTICATED, "authentication required: send 'Authorization: Bearer <token>' "
                        "with a ServiceAccount token or an API key")
NO_CLIENT_CERT = Verdict(UNAUTHENTICATED, "a client certificate is required (mTLS): connect with the "
                         "certificate and key your CA issued")


def bearer(header: str | bytes | None) -> str | None | Verdict:
    """The credential of an Authorization header: None when absent, a Verdict when malformed."""
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return Verdict(UNAUTHENTICATED, f"the Authorization header must use the Bearer scheme, got {scheme[:16]!r}")
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        return Verdict(UNAUTHENTICATED, "the Authorization header's bearer credential is empty or contains spaces")
    return value


def fingerprint(secret: str) -> str:
    """What the cache and the key set hold instead of the secret itself."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def parse_key_file(text: str) -> list[str]:
    """Keys of one file: one per line; blank lines and lines starting with '#' are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def looks_like_jwt(credential: str) -> bool:
    """ServiceAccount tokens are JWTs (three base64url parts); anything else cannot pass TokenReview."""
    parts = credential.split(".")
    return len(parts) == 3 and all(parts)


def token_review_body(token: str, audiences: Iterable[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    auds = list(audiences)
    if auds:
        spec["audiences"] = auds
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def service_account_of(username: str) -> str | None:
    """`system:serviceaccount:ns:name` -> `ns/name`; None for other users."""
    prefix = "system:serviceaccount:"
    if not username.startswith(prefix):
        return None
    ns, _, name = username[len(prefix):].partition(":")
    return f"{ns}/{name}" if ns and name else None


def judge_token_review(status: dict[str, Any], audiences: Iterable[str], allowed: frozenset[str]
                       ) -> tuple[Verdict | None, dict[str, Any]]:
    """A TokenReview status -> (final verdict or None to go on to SubjectAccessReview, the user).

    `allowed` holds `namespace/name` of ServiceAccounts let in; empty lets in every token
    that authenticates for our audiences (then a SubjectAccessReview, if on, decides).
    """
    user = status.get("user") or {}
    if not status.get("authenticated"):
        why = status.get("error") or "the token is invalid, expired, revoked or for another audience"
        return Verdict(UNAUTHENTICATED, f"the bearer token was not accepted by the Kubernetes API: {why}",
                       "token"), user
    wanted = list(audiences)
    got = status.get("audiences") or []
    if wanted and not set(wanted) & set(got):
        return Verdict(UNAUTHENTICATED, f"the bearer token is not meant for this service: its audiences "
                       f"{sorted(got)} do not include any of {wanted}", "token"), user
    username = str(user.get("username", ""))
    if allowed:
        sa = service_account_of(username)
        if sa not in allowed:
            return Verdict(FORBIDDEN, f"{username or 'this user'} is not one of the ServiceAccounts allowed to call "
                           f"this service ({', '.join(sorted(allowed))})", "token"), user
    return None, user


def access_review_body(user: dict[str, Any], namespace: str, name: str, verb: str) -> dict[str, Any]:
    """A SubjectAccessReview: may `user` `<verb>` the ModelService `namespace/name`?"""
    spec: dict[str, Any] = {
        "user": user.get("username", ""),
        "groups": list(user.get("groups") or []),
        "resourceAttributes": {"group": "modelship.dev", "resource": "modelservices", "verb": verb,
                               "namespace": namespace, "name": name},
    }
    if user.get("uid"):
        spec["uid"] = user["uid"]
    if user.get("extra"):
        spec["extra"] = user["extra"]
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def judge_access_review(status: dict[str, Any], user: dict[str, Any], namespace: str, name: str, verb: str
                        ) -> Verdict:
    if status.get("allowed") and not status.get("denied"):
        return Verdict(ALLOWED, method="token")
    who = user.get("username") or "this user"
    return Verdict(FORBIDDEN, f"{who} may not {verb} modelservices/{name} in namespace {namespace} "
                   f"(grant the verb {verb!r} on modelservices in a Role)", "token")
