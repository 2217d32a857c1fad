"""TLS for the HTTP and gRPC ports from files in cert-manager's Secret layout.

A Secret of type kubernetes.io/tls mounted as a folder holds `tls.crt`, `tls.key` and,
from cert-manager, `ca.crt`. The files are checked at start (a certificate that does not
match its key stops the server with a message naming both files) and re-read when they
change, without touching open connections:

- HTTP: the listening socket's context has no certificate of its own; its SNI callback
  (called for every handshake, with or without SNI) hands each new connection the
  context of the newest good files. Connections already open keep theirs.
- gRPC: grpc's dynamic server credentials ask `fetch()` at each new handshake.

When the files disappear or turn bad at runtime the server keeps the last good
certificate, logs a warning and counts it in `modelship_tls_reloads_total{outcome="failed"}`.

mTLS: gRPC requires a client certificate at the handshake. HTTP asks for one but lets a
connection without one finish the handshake, and the HTTP layer refuses every path but
health with 401: kubelet's HTTPS probes carry no client certificate.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from pathlib import Path
from typing import Any, Iterator

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .filewatch import Signature, signature

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mTLS, clients must present a certificate this CA signed

    @classmethod
    def from_dir(cls, folder: Path, mtls: bool) -> TlsConfig:
        """cert-manager's layout: tls.crt, tls.key, ca.crt."""
        return cls(folder / "tls.crt", folder / "tls.key", folder / "ca.crt" if mtls else None)

    def files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None]


@dataclasses.dataclass(frozen=True)
class Material:
    """One good set of files, read once: the HTTP context and the gRPC bytes come from the same read."""

    context: ssl.SSLContext
    cert: bytes
    key: bytes
    ca: bytes | None


def read_material(cfg: TlsConfig) -> Material:
    """Read and check the files; ValueError naming the files and what is wrong."""
    for p in cfg.files():
        if not p.is_file():
            raise ValueError(f"TLS file {p} does not exist (expected tls.crt, tls.key"
                             f"{' and ca.crt' if cfg.client_ca_file else ''} from a kubernetes.io/tls Secret)")
    cert, key = cfg.cert_file.read_bytes(), cfg.key_file.read_bytes()
    ca = cfg.client_ca_file.read_bytes() if cfg.client_ca_file else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except ssl.SSLError as exc:
        what = ("does not match the private key" if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch"
                in str(exc) else f"cannot be loaded ({exc.reason or exc})")
        raise ValueError(f"the certificate {cfg.cert_file} {what} in {cfg.key_file}") from None
    if ca is not None:
        try:
            ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"the client CA {cfg.client_ca_file} is not a PEM certificate: {exc}") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return Material(ctx, cert, key, ca)


class TlsFiles:
    """The current good material and its reloads; one per server, shared by HTTP and gRPC."""

    def __init__(self, cfg: TlsConfig) -> None:
        self.cfg = cfg
        self.current = read_material(cfg)
        self.sig: Signature = signature(cfg.files())
        self.generation = 1
        self.reloads = 0
        self.failures = 0
        self.stale = False  # serving the last good files because the current ones are bad or gone

    @property
    def mtls(self) -> bool:
        return self.cfg.client_ca_file is not None

    def maybe_reload(self) -> bool:
        sig = signature(self.cfg.files())
        if sig == self.sig:
            return False
        self.sig = sig
        try:
            material = read_material(self.cfg)
        except (ValueError, OSError) as exc:
            self.failures += 1
            self.stale = True
            log.warning("TLS files changed but cannot be used (%s): still serving the last good certificate", exc)
            return False
        self.current = material
        self.generation += 1
        self.reloads += 1
        self.stale = False
        log.info("TLS certificate reloaded from %s; new connections use it, open ones keep theirs", self.cfg.cert_file)
        return True

    # -- HTTP -------------------------------------------------------------------

    def http_context(self) -> ssl.SSLContext:
        """The listening context: certificate-less, it hands each handshake the newest material."""
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.mtls:
            base.verify_mode = ssl.CERT_OPTIONAL

        def choose(sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.context = self.current.context

        base.sni_callback = choose
        return base

    # -- gRPC -------------------------------------------------------------------

    def _grpc_config(self) -> Any:
        m = self.current
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        fetched = [self.generation]

        def fetch() -> Any:
            # Called by gRPC at each new handshake: a new configuration only when the files changed.
            if fetched[0] == self.generation:
                return None
            fetched[0] = self.generation
            return self._grpc_config()

        return grpc.dynamic_ssl_server_credentials(self._grpc_config(), fetch,
                                                   require_client_authentication=self.mtls)

    # -- metrics ----------------------------------------------------------------

    def collect(self) -> Iterator:
        reloads = CounterMetricFamily("modelship_tls_reloads",
                                      "Reloads of the TLS files by outcome (ok; failed: the last good certificate stays).",
                                      labels=["outcome"])
        reloads.add_metric(["ok"], self.reloads)
        reloads.add_metric(["failed"], self.failures)
        stale = GaugeMetricFamily("modelship_tls_stale",
                                  "1 while the TLS files are missing or bad and the last good certificate is served.")
        stale.add_metric([], 1 if self.stale else 0)
        yield from (reloads, stale)

    def describe(self) -> list:
        return []
