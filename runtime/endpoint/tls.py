"""The head's TLS identity: a key made in memory inside the CVM, a self-signed certificate.

Why self-signed: clients trust the key because the head's evidence binds its SPKI hash
(endpoint.binding), not because a CA vouched for a name. The private key never touches a disk
except for the instant the ssl module needs a file: a 0600 file in memory-backed /dev/shm that is
removed right after loading.
"""
from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conclave.runtime.endpoint.binding import spki_sha256


@dataclass(frozen=True)
class HeadTlsIdentity:
    cert_pem: bytes
    _key_pem: bytes
    spki_sha256: bytes

    def __repr__(self) -> str:
        return f"HeadTlsIdentity(spki_sha256={self.spki_sha256.hex()}, key=<redacted>)"

    def server_context(self, *, tmp_dir: str = "/dev/shm") -> ssl.SSLContext:
        """An ssl server context holding this identity (the key file exists only while loading)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        fd, path = tempfile.mkstemp(prefix="conclave-tls-", dir=tmp_dir if os.path.isdir(tmp_dir) else None)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.cert_pem + self._key_pem)
            os.close(fd)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx


def generate_head_identity(names: Sequence[str] = ("localhost",), *,
                           validity: timedelta = timedelta(days=30),
                           now: datetime | None = None) -> HeadTlsIdentity:
    """P-256 key + self-signed certificate with the given DNS names / IP addresses as SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = now or datetime.now(timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conclave-head")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return HeadTlsIdentity(cert.public_bytes(serialization.Encoding.PEM), key_pem, spki_sha256(cert))
