"""Model URIs: the one parser for `spec.model.uri` (and `spec.optimization.dataset.uri`, which
takes the same schemes), shared by render and the fetch step; and `redact`, which every
message, log line and status that names a URI goes through.

Standard library only, because the fetch step imports it inside the serving image. The
CRD's CEL rule accepts the same shapes; this module is the precise version both sides use.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

SCHEMES = ("https", "http", "s3", "pvc")
REDACTED = "REDACTED"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# A URI inside free text: a scheme, "://", then up to whitespace or a quote.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class InvalidModelURI(ValueError):
    """The URI cannot name a model file; the message says what is wrong and what was given."""


@dataclasses.dataclass(frozen=True)
class ModelURI:
    """A parsed model URI. `location` is the host (http/s), bucket (s3) or claim (pvc)."""

    scheme: str
    location: str
    path: str  # without a leading slash for s3 and pvc; with it for http(s)
    raw: str

    @property
    def redacted(self) -> str:
        """The URI as messages show it: no userinfo, no query string (see `redact`)."""
        return redact(self.raw)

    @property
    def filename(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def parse(uri: str, *, field: str = "spec.model.uri") -> ModelURI:
    """Parse and check `uri`; raise InvalidModelURI naming `field`, the expected form and the value."""
    if not isinstance(uri, str) or not uri:
        raise InvalidModelURI(f"{field} must be a non-empty string")
    if any(c.isspace() for c in uri):
        raise InvalidModelURI(f"{field} must not contain whitespace; got {redact(uri)!r}")
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidModelURI(
            f"{field} must start with https://, http://, s3:// or pvc://; got {redact(uri)!r}"
        )
    if parts.query or parts.fragment:
        if scheme != "http" and scheme != "https":
            raise InvalidModelURI(f"{field} of scheme {scheme} takes no ?query or #fragment; got {redact(uri)!r}")
    host = parts.netloc
    path = parts.path
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidModelURI(f"{field} has no host; expected {scheme}://host/path, got {redact(uri)!r}")
        if not path.strip("/"):
            raise InvalidModelURI(f"{field} has no file path; expected {scheme}://host/path, got {redact(uri)!r}")
        if parts.query:
            path = f"{path}?{parts.query}"
        return ModelURI(scheme=scheme, location=host, path=path, raw=uri)
    key = path.lstrip("/")
    if scheme == "s3":
        if not _BUCKET.match(host):
            raise InvalidModelURI(f"{field} names no valid S3 bucket; expected s3://bucket/key, got {redact(uri)!r}")
        if not key:
            raise InvalidModelURI(f"{field} has no object key; expected s3://bucket/key, got {redact(uri)!r}")
        return ModelURI(scheme=scheme, location=host, path=key, raw=uri)
    # pvc://claim/path/in/volume
    if not _DNS_LABEL.match(host) or len(host) > 253:
        raise InvalidModelURI(
            f"{field} names no valid PersistentVolumeClaim; expected pvc://claim/path, got {redact(uri)!r}"
        )
    if not key or any(seg == ".." for seg in key.split("/")):
        raise InvalidModelURI(
            f"{field} needs a path inside the claim without '..'; expected pvc://claim/path, got {redact(uri)!r}"
        )
    return ModelURI(scheme=scheme, location=host, path=key, raw=uri)


def redact(uri: str) -> str:
    """`uri` without what may be a secret: userinfo (`user:password@`) becomes REDACTED@ and a
    query string (a presigned URL's signature and credential) ?REDACTED; a fragment goes too.

    Never raises: it also takes strings that are not valid URIs, since error messages name those.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    tail = REDACTED if cut < len(rest) else ""
    rest = rest[:cut]
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if "@" in authority:
        authority = f"{REDACTED}@{authority.rpartition('@')[2]}"
    return f"{scheme}://{authority}{path}" + (f"?{tail}" if tail else "")


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted (see `redact`)."""
    def one(match: re.Match[str]) -> str:
        uri = match.group(0)
        bare = uri.rstrip(":,.;)]")  # the sentence's punctuation, not the URI's
        return redact(bare) + uri[len(bare):]

    return _URI_IN_TEXT.sub(one, text)
