"""SNP collateral: raw AMD KDS responses read from disk (the only I/O of SNP verification).

A folder holds what KDS serves, under any of these names: vcek.der / vlek.der
(/vcek/v1/<product>/<hwid>?..., /vlek/v1/...), cert_chain.pem (ASK + ARK, or ASVK + ARK),
crl.der (/vcek/v1/<product>/crl). Any other *.pem/*.der/*.crt/*.cer/*.crl file in the folder is
read too and classified by content (certificate or CRL). A single file may be a chain (PEM
bundle), one DER certificate, one CRL, or a PEM bundle of certificates followed by CRLs
(what a peer shares, collateral_share).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from conclave.runtime.attestation.core import Reason, VerificationFailed
from conclave.runtime.attestation.snp_certs import CertError, amd_cert, load_crl, split_certificates
from conclave.runtime.attestation.snp_der import AmdCert

SUFFIXES = {".pem", ".der", ".crt", ".cer", ".crl"}
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 64


@dataclass(frozen=True)
class SnpCollateral:
    """Certificates (any role, any order) and AMD KDS CRLs for verify()."""

    certs: tuple[AmdCert, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()


def _is_crl(data: bytes) -> bool:
    if b"-----BEGIN X509 CRL-----" in data:
        return True
    if b"-----BEGIN" in data:
        return False
    try:
        x509.load_der_x509_crl(data)
        return True
    except ValueError:
        return False


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise VerificationFailed(Reason.COLLATERAL_INVALID, f"{path.name}: larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise VerificationFailed(Reason.COLLATERAL_INVALID, f"{path.name}: cannot read ({exc.strerror})") from None


def parse_collateral_bytes(blobs: list[tuple[str, bytes]]) -> SnpCollateral:
    """Classifies named blobs into certificates and CRLs; pure, for tests and for callers that
    already hold KDS responses in memory."""
    certs: list[AmdCert] = []
    crls: list[x509.CertificateRevocationList] = []
    for name, data in blobs:
        try:
            if b"-----BEGIN X509 CRL-----" in data and b"-----BEGIN CERTIFICATE-----" in data:
                # one PEM bundle of certificates and CRLs (collateral a peer shared: collateral_share)
                head, _, tail = data.partition(b"-----BEGIN X509 CRL-----")
                certs.extend(amd_cert(der) for der in split_certificates(head))
                for block in (b"-----BEGIN X509 CRL-----" + tail).split(b"-----END X509 CRL-----")[:-1]:
                    crls.append(load_crl(block + b"-----END X509 CRL-----\n"))
            elif _is_crl(data):
                crls.append(load_crl(data))
            else:
                certs.extend(amd_cert(der) for der in split_certificates(data))
        except CertError as exc:
            raise VerificationFailed(Reason.COLLATERAL_INVALID, f"{name}: {exc}") from None
    if not certs and not crls:
        raise VerificationFailed(Reason.COLLATERAL_INVALID, "SNP collateral holds no certificate or CRL")
    return SnpCollateral(tuple(certs), tuple(crls))


def load_collateral(path: Path) -> SnpCollateral:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if len(files) > MAX_FILES:
            raise VerificationFailed(Reason.COLLATERAL_INVALID, f"{path}: more than {MAX_FILES} files")
        return parse_collateral_bytes([(p.name, _read(p)) for p in files])
    if path.is_file():
        return parse_collateral_bytes([(path.name, _read(path))])
    raise VerificationFailed(Reason.COLLATERAL_MISSING, f"{path}: no such file or folder")
