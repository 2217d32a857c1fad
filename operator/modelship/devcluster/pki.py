"""Certificates, keys and tokens for one local control plane.

A plane gets its own CA, a serving certificate for 127.0.0.1 and localhost (so clients verify
TLS rather than skipping it), a key pair that signs ServiceAccount tokens, and a static token
per control-plane identity. Everything is written once into the state directory and reused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

# Static token identities: who, and the groups RBAC's bootstrap policy already knows.
IDENTITIES: dict[str, tuple[str, ...]] = {
    "admin": ("system:masters",),
    "system:kube-controller-manager": (),
    "system:kube-scheduler": (),
    "kwok": ("system:masters",),
}


@dataclass(frozen=True)
class Pki:
    """Paths of the PKI files and the token of each identity."""

    dir: Path
    tokens: dict[str, str]

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.dir / "tokens.csv"


def ensure_pki(directory: Path) -> Pki:
    """Create the PKI in `directory` unless it is already there; return it either way."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory, {})
    if not (pki.token_file.is_file() and pki.serving_cert.is_file() and pki.service_account_pub.is_file()):
        _generate(pki)
    return Pki(directory, _read_tokens(pki.token_file))


def _generate(pki: Pki) -> None:
    # Imported here: only `dev-cluster up` needs it, and --help must stay light.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    validity = dt.timedelta(days=365)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def pem_key(key) -> bytes:  # noqa: ANN001 - any private key type
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("modelship-dev-cluster-ca"))
        .issuer_name(name("modelship-dev-cluster-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the `kubernetes` Service's ClusterIP
    ]
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(name("kube-apiserver"))
        .issuer_name(ca_cert.subject)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    # ServiceAccount tokens are RS256-signed by default: an RSA key keeps every client happy.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.serving_cert.write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(pki.serving_key, pem_key(serving_key))
    _write_private(pki.service_account_key, pem_key(sa_key))
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    lines = []
    for user, groups in IDENTITIES.items():
        token = secrets.token_hex(24)
        fields = [token, user, user]
        if groups:
            fields.append('"' + ",".join(groups) + '"')
        lines.append(",".join(fields))
    _write_private(pki.token_file, ("\n".join(lines) + "\n").encode())


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


def _read_tokens(token_file: Path) -> dict[str, str]:
    tokens = {}
    for line in token_file.read_text().splitlines():
        if line.strip():
            token, user = line.split(",")[:2]
            tokens[user] = token
    return tokens
