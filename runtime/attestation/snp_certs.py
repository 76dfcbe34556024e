"""AMD SEV-SNP certificates: loading, role identification, AMD extensions, pinned roots,
signature checks (cached) and the KDS CRL.

Roles come from the subject CN, as AMD's KDS names them (VCEK/KDS interface spec, pub. 57230):
  ARK-<Product>        AMD Root Key (self-signed, RSA-4096, RSASSA-PSS SHA-384)
  SEV-<Product>        ASK: AMD SEV Key, signs VCEKs
  SEV-VLEK-<Product>   ASVK: AMD SEV VLEK key, signs VLEKs
  SEV-VCEK / SEV-VLEK  endorsement keys (ECDSA P-384) that sign reports
Product names may carry a stepping suffix in the VCEK's productName extension ("Milan-B0").
"""
from __future__ import annotations

import base64
import hashlib
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from conclave.runtime.attestation.snp_der import (
    OID_ECDSA_SHA384, OID_RSASSA_PSS, OID_SHA256, OID_SHA384, OID_SHA512, AmdCert, DerError,
    decode_extension_integer, decode_extension_string, parse_certificate,
)

ROOTS_DIR = Path(__file__).resolve().parent / "roots"

# SHA-256 of the DER encoding of AMD's public ARKs. Taken from the KDS cert_chain files that
# google/go-sev-guest, confidential-containers/trustee and virtee/sev ship (identical in all
# three), self-signatures checked (RSASSA-PSS SHA-384, salt 48). A root file that does not hash
# to its pin is refused: the pin is the trust anchor, the file is only its carrier.
FINGERPRINTS: dict[str, str] = {
    "milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

# AMD VCEK/VLEK extensions (pub. 57230, "VCEK Certificate Extensions").
OID_AMD = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = OID_AMD + ".1"
OID_PRODUCT_NAME = OID_AMD + ".2"
OID_BL_SPL = OID_AMD + ".3.1"
OID_TEE_SPL = OID_AMD + ".3.2"
OID_SNP_SPL = OID_AMD + ".3.3"
OID_UCODE_SPL = OID_AMD + ".3.8"
OID_FMC_SPL = OID_AMD + ".3.9"
OID_HWID = OID_AMD + ".4"
OID_CSP_ID = OID_AMD + ".5"

TCB_OIDS = {"bootloader": OID_BL_SPL, "tee": OID_TEE_SPL, "snp": OID_SNP_SPL,
            "microcode": OID_UCODE_SPL, "fmc": OID_FMC_SPL}

_PRODUCT_NAMES = {"milan": "Milan", "genoa": "Genoa", "turin": "Turin"}
_ROLE_RE = re.compile(r"^(ARK|SEV|SEV-VLEK)-(Milan|Genoa|Turin)$")


class CertError(ValueError):
    """A certificate or CRL could not be read (callers map it to a reason)."""


@dataclass(frozen=True)
class Role:
    kind: str               # "ark" | "ask" | "asvk" | "vcek" | "vlek" | "other"
    product: str | None     # for ark/ask/asvk: from the CN; for vcek/vlek: from productName


def role_of(cert: AmdCert) -> Role:
    cn = cert.subject_cn or ""
    m = _ROLE_RE.match(cn)
    if m:
        kind = {"ARK": "ark", "SEV": "ask", "SEV-VLEK": "asvk"}[m.group(1)]
        return Role(kind, m.group(2).lower())
    if cn in ("SEV-VCEK", "SEV-VLEK"):
        return Role(cn[4:].lower(), product_from_name(cert))
    return Role("other", None)


def product_from_name(cert: AmdCert) -> str | None:
    raw = cert.extensions.get(OID_PRODUCT_NAME)
    if raw is None:
        return None
    try:
        name = decode_extension_string(raw)
    except DerError:
        return None
    base = name.split("-", 1)[0].lower()
    return base if base in _PRODUCT_NAMES else None


def tcb_of(cert: AmdCert) -> dict[str, int]:
    """The SPL extensions present in a VCEK/VLEK as {bootloader, tee, snp, microcode[, fmc]}."""
    out = {}
    for name, oid in TCB_OIDS.items():
        raw = cert.extensions.get(oid)
        if raw is not None:
            value = decode_extension_integer(raw)
            if not 0 <= value <= 255:
                raise DerError(f"{name} SPL out of range")
            out[name] = value
    return out


def hwid_of(cert: AmdCert) -> bytes | None:
    """The hwID extension: raw (64 bytes; 8 on Turin) or wrapped in a DER OCTET STRING."""
    raw = cert.extensions.get(OID_HWID)
    if raw is None:
        return None
    if len(raw) >= 2 and raw[0] == 0x04 and raw[1] < 0x80 and raw[1] == len(raw) - 2 \
            and raw[1] in (8, 64):
        return raw[2:]
    if len(raw) in (8, 64):
        return raw
    raise DerError(f"hwID extension has unexpected length {len(raw)}")


# ---------------------------------------------------------------- loading

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_parse_lock = threading.Lock()
_parsed: dict[bytes, AmdCert] = {}
_PARSED_MAX = 512


def amd_cert(der: bytes) -> AmdCert:
    """Parses (once; cached by content) one DER certificate."""
    key = hashlib.sha256(der).digest()
    with _parse_lock:
        hit = _parsed.get(key)
    if hit is not None:
        return hit
    try:
        cert = parse_certificate(der)
    except DerError as exc:
        raise CertError(f"certificate is malformed: {exc}") from None
    with _parse_lock:
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[key] = cert
    return cert


def split_certificates(data: bytes) -> list[bytes]:
    """PEM bundle (any number) or one DER certificate -> list of DER blobs."""
    data = bytes(data)
    if b"-----BEGIN" in data:
        blobs = []
        for m in _PEM_RE.finditer(data):
            try:
                blobs.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
            except ValueError:
                raise CertError("PEM certificate has bad base64") from None
        if not blobs:
            raise CertError("no PEM certificate found")
        return blobs
    return [data]


def as_amd_certs(items: Iterable[Any]) -> list[AmdCert]:
    """x509.Certificate, AmdCert, or raw PEM/DER bytes -> AmdCert list (duplicates dropped)."""
    out: list[AmdCert] = []
    seen: set[bytes] = set()
    for item in items:
        if isinstance(item, AmdCert):
            certs = [item]
        elif isinstance(item, x509.Certificate):
            certs = [amd_cert(item.public_bytes(serialization.Encoding.DER))]
        elif isinstance(item, (bytes, bytearray, memoryview)):
            certs = [amd_cert(b) for b in split_certificates(bytes(item))]
        else:
            raise CertError(f"unsupported certificate object {type(item).__name__}")
        for c in certs:
            if c.fingerprint not in seen:
                seen.add(c.fingerprint)
                out.append(c)
    return out


def embedded_root(product: str) -> AmdCert:
    """The ARK shipped in roots/, refused unless it hashes to its pinned fingerprint."""
    pem = (ROOTS_DIR / f"amd_ark_{product}.pem").read_bytes()
    (cert,) = [amd_cert(d) for d in split_certificates(pem)]
    if cert.fingerprint.hex() != FINGERPRINTS[product]:
        raise CertError(f"embedded ARK for {product} does not match its pinned fingerprint")
    return cert


# ---------------------------------------------------------------- signatures

_HASHES = {OID_SHA256: hashes.SHA256, OID_SHA384: hashes.SHA384, OID_SHA512: hashes.SHA512}
_verified_lock = threading.Lock()
_verified: set[tuple[bytes, bytes]] = set()   # (issuer SPKI sha256, cert sha256) that verified
_VERIFIED_MAX = 4096


def signature_ok(cert: AmdCert, issuer: AmdCert) -> bool:
    """Whether `issuer`'s key signed `cert`. Only successes are cached (a pure function of the
    issuer key and the certificate bytes), which makes the RSA-PSS chain checks free after the
    first report from a given chain."""
    key = (hashlib.sha256(issuer.spki_der).digest(), cert.fingerprint)
    with _verified_lock:
        if key in _verified:
            return True
    ok = _verify_signature(issuer.public_key(), cert.signature_algorithm, cert.signature, cert.tbs)
    if ok:
        with _verified_lock:
            if len(_verified) >= _VERIFIED_MAX:
                _verified.clear()
            _verified.add(key)
    return ok


def _verify_signature(public_key: Any, alg: Any, signature: bytes, data: bytes) -> bool:
    try:
        if alg.oid == OID_RSASSA_PSS:
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            hash_cls = _HASHES.get(alg.hash_oid)
            if hash_cls is None or alg.mgf_hash_oid != alg.hash_oid:
                return False  # AMD uses SHA-384 with MGF1-SHA-384; anything else is refused
            public_key.verify(signature, data,
                              padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=alg.salt_length),
                              hash_cls())
            return True
        if alg.oid == OID_ECDSA_SHA384:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
            return True
        return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False


def valid_at(cert: AmdCert, at: datetime) -> bool:
    return cert.not_before <= at <= cert.not_after


# ---------------------------------------------------------------- CRL

def load_crl(data: bytes) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertError(f"CRL is malformed: {exc}") from None


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: AmdCert) -> bool:
    """AMD's KDS CRLs are RSASSA-PSS signed by the ARK."""
    try:
        params = crl.signature_algorithm_parameters
        hash_alg = crl.signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError):
        return False
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not isinstance(params, padding.PSS) or hash_alg is None:
        return False
    if crl.issuer.public_bytes() != issuer.subject_der:
        return False
    try:
        key.verify(crl.signature, crl.tbs_certlist_bytes, params, hash_alg)
        return True
    except (InvalidSignature, ValueError):
        return False


def crl_current(crl: x509.CertificateRevocationList, at: datetime) -> bool:
    next_update = crl.next_update_utc
    return crl.last_update_utc <= at and (next_update is None or at <= next_update)


def revoked_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def pick(certs: Sequence[AmdCert], kind: str, product: str | None = None) -> list[AmdCert]:
    out = []
    for c in certs:
        r = role_of(c)
        if r.kind == kind and (product is None or r.product in (None, product)):
            out.append(c)
    return out
