"""NVIDIA device-identity certificate chains: pinned root, path building, DICE FWID, identity.

The GPU's attestation key is certified by a per-boot leaf ("GH100 A01 GSP FMC LF") that the
GPU's boot ROM identity ("GSP BROM", unique per chip) signs; NVIDIA's provisioning CAs sign the
BROM certificate up to the "NVIDIA Device Identity CA" root. The leaf carries the firmware ID
(FWID, SHA-384 of the GSP firmware) in a TCG DICE extension, which must equal the FWID the
firmware reports in its opaque data: that ties the certified key to the running firmware.

Pure functions: certificates and the verification time in, a path or a ChainError out. No
network: NVIDIA's OCSP responder is never contacted (callers say so in their result).
"""
from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from conclave.runtime.attestation.core import Reason, VerificationFailed

ROOTS_DIR = Path(__file__).resolve().parent / "roots"
# SHA-256 over the DER of each embedded NVIDIA root; a file that does not match is refused.
FINGERPRINTS: Mapping[str, str] = MappingProxyType({
    "nvidia_device_identity_root.pem":
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48",
})

DICE_TCB_INFO_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
NVIDIA_DEVICE_ID_SAN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.412.274.1")
SHA384_OID = "2.16.840.1.101.3.4.2.2"
FWID_LEN = 48
MAX_CHAIN_DEPTH = 8
# Critical extensions this verifier understands; any other critical extension rejects the cert
# (RFC 5280 4.2). Name constraints are absent from NVIDIA's PKI and not processed here.
_KNOWN_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    DICE_TCB_INFO_OID, x509.ObjectIdentifier("2.23.133.5.4.4"), x509.ObjectIdentifier("2.23.133.5.4.5"),
})


class ChainError(Exception):
    """A chain problem with its stable reason; the verifier records it as a failed step."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(_der(cert)).hexdigest()


def pinned_roots(roots_dir: Path = ROOTS_DIR) -> tuple[x509.Certificate, ...]:
    """The embedded NVIDIA device roots, each checked against its pinned fingerprint (fail closed)."""
    roots = []
    for name, expected in FINGERPRINTS.items():
        try:
            cert = x509.load_pem_x509_certificate((roots_dir / name).read_bytes())
        except (OSError, ValueError) as exc:
            raise VerificationFailed(Reason.CHAIN_UNTRUSTED,
                                     f"embedded NVIDIA root {name} cannot be loaded: {exc}") from None
        if fingerprint(cert) != expected:
            raise VerificationFailed(Reason.CHAIN_UNTRUSTED,
                                     f"embedded NVIDIA root {name} does not match its pinned fingerprint")
        roots.append(cert)
    return tuple(roots)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    bc = _basic_constraints(cert)
    return bool(bc and bc.ca)


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def dedupe(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: set[bytes] = set()
    out = []
    for c in certs:
        d = _der(c)
        if d not in seen:
            seen.add(d)
            out.append(c)
    return out


def select_leaf(pool: Sequence[x509.Certificate]) -> x509.Certificate:
    """The first end-entity (non-CA) certificate, in the order given (bundled chain first)."""
    for cert in pool:
        if not is_ca(cert):
            return cert
    if not pool:
        raise ChainError(Reason.CERTS_MISSING, "no device certificate chain was given (use --certs)")
    raise ChainError(Reason.CERTS_MISSING,
                     "the chain holds no device leaf certificate (only CA certificates)")


def build_path(leaf: x509.Certificate, pool: Sequence[x509.Certificate],
               roots: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """leaf -> ... -> trusted root, by issuer name and signature; ChainError(chain_untrusted)."""
    root_ders = {_der(r) for r in roots}
    path = [leaf]
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        if current is not leaf and _der(current) in root_ders:
            return path
        for root in roots:
            if _issued_by(current, root):
                path.append(root)
                return path
        if current.issuer == current.subject and _issued_by(current, current):
            raise ChainError(Reason.CHAIN_UNTRUSTED,
                             f"the chain ends at an untrusted root {current.subject.rfc4514_string()}")
        on_path = {_der(c) for c in path}
        issuer = next((c for c in pool if _der(c) not in on_path and _issued_by(current, c)), None)
        if issuer is None:
            raise ChainError(Reason.CHAIN_UNTRUSTED,
                             f"no certificate in the chain issued {current.subject.rfc4514_string()} "
                             f"(issuer {current.issuer.rfc4514_string()} missing or its signature is invalid)")
        path.append(issuer)
        current = issuer
    raise ChainError(Reason.CHAIN_UNTRUSTED, f"chain longer than {MAX_CHAIN_DEPTH} certificates")


def check_path(path: Sequence[x509.Certificate], at: datetime) -> None:
    """Validity at `at`, CA constraints and critical extensions along a built path."""
    for cert in path:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainError(Reason.CERT_EXPIRED,
                             f"{cert.subject.rfc4514_string()} is valid from "
                             f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}, "
                             f"not at {at.isoformat()}")
    for cert in path:
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _KNOWN_CRITICAL:
                raise ChainError(Reason.CHAIN_UNTRUSTED,
                                 f"{cert.subject.rfc4514_string()} has an unsupported critical extension {ext.oid.dotted_string}")
    leaf = path[0]
    if is_ca(leaf):
        raise ChainError(Reason.CHAIN_UNTRUSTED, "the device leaf certificate is a CA certificate")
    _require_key_usage(leaf, "digital_signature")
    for depth, ca in enumerate(path[1:], start=1):
        bc = _basic_constraints(ca)
        name = ca.subject.rfc4514_string()
        if bc is None or not bc.ca:
            raise ChainError(Reason.CHAIN_UNTRUSTED, f"{name} signs certificates but is not a CA")
        # CA certificates strictly between this one and the leaf (RFC 5280 pathLenConstraint)
        below = depth - 1
        if bc.path_length is not None and below > bc.path_length:
            raise ChainError(Reason.CHAIN_UNTRUSTED, f"{name} path length constraint {bc.path_length} exceeded")
        _require_key_usage(ca, "key_cert_sign")


def _require_key_usage(cert: x509.Certificate, usage: str) -> None:
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not getattr(ku, usage):
        raise ChainError(Reason.CHAIN_UNTRUSTED,
                         f"{cert.subject.rfc4514_string()} key usage does not allow {usage}")


def verify_chain(chain: Sequence[x509.Certificate], extra: Sequence[x509.Certificate],
                 roots: Sequence[x509.Certificate], at: datetime) -> list[x509.Certificate]:
    """Select the leaf, build the path to a trusted root and check it; returns leaf..root."""
    pool = dedupe([*chain, *extra])
    leaf = select_leaf(pool)
    path = build_path(leaf, pool, roots)
    check_path(path, at)
    return path


# --- TCG DICE FWID -------------------------------------------------------------------------

def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level DER TLVs of `data` as (tag, content); ValueError on malformed input."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise ValueError("high tag numbers are not used here")
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise ValueError("DER content past the end")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def _oid_text(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    arcs, value = [], 0
    for b in content:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _fwid_pair(content: bytes) -> tuple[str, bytes] | None:
    items = _der_items(content)
    if len(items) == 2 and items[0][0] == 0x06 and items[1][0] == 0x04:
        return _oid_text(items[0][1]), items[1][1]
    return None


def dice_fwids(cert: x509.Certificate) -> list[tuple[str, bytes]] | None:
    """FWIDs (hash OID, digest) from the leaf's 2.23.133.5.4.1 extension; None when absent.

    Two shapes are read: NVIDIA's (SEQUENCE { INTEGER version, SubjectPublicKeyInfo,
    SEQUENCE { hashAlg OID, digest OCTET STRING } }) and the TCG DiceTcbInfo one, where the
    FWIDs sit in the [6] IMPLICIT fwids list. nvtrust reads "the last 48 bytes"; a structured
    read gives the same value on NVIDIA's certificates and refuses anything else.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(DICE_TCB_INFO_OID)
    except x509.ExtensionNotFound:
        return None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    try:
        outer = _der_items(raw)
        if len(outer) != 1 or outer[0][0] != 0x30:
            return []
        fwids: list[tuple[str, bytes]] = []
        for tag, content in _der_items(outer[0][1]):
            if tag == 0x30:
                pair = _fwid_pair(content)
                if pair:
                    fwids.append(pair)
            elif tag == 0xA6:  # [6] IMPLICIT SEQUENCE OF FWID
                for inner_tag, inner in _der_items(content):
                    pair = _fwid_pair(inner) if inner_tag == 0x30 else None
                    if pair:
                        fwids.append(pair)
        return fwids
    except ValueError:
        return []


def leaf_fwid(cert: x509.Certificate) -> bytes:
    """The SHA-384 FWID certified in the leaf; ChainError when missing or ambiguous."""
    fwids = dice_fwids(cert)
    if fwids is None:
        raise ChainError(Reason.CHAIN_UNTRUSTED, "the device leaf certificate has no DICE FWID extension")
    sha384 = [d for oid, d in fwids if oid == SHA384_OID and len(d) == FWID_LEN]
    if len(sha384) != 1:
        raise ChainError(Reason.CHAIN_UNTRUSTED,
                         "the device leaf's DICE extension does not hold exactly one SHA-384 FWID")
    return sha384[0]


# --- identity ------------------------------------------------------------------------------

def subject_serial(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return str(attrs[0].value) if attrs else None


def device_id(cert: x509.Certificate) -> str | None:
    """NVIDIA's device identifier from the leaf SAN otherName 1.3.6.1.4.1.412.274.1
    (e.g. "NVIDIA:GH100:48B02D92494BADF4")."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for name in san.get_values_for_type(x509.OtherName):
        if name.type_id == NVIDIA_DEVICE_ID_SAN_OID:
            try:
                items = _der_items(name.value)
                if len(items) == 1 and items[0][0] in (0x0C, 0x13, 0x16):
                    return items[0][1].decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def arch_from_cert(cert: x509.Certificate) -> str | None:
    """Device architecture from the leaf common name ("GH100 A01 GSP FMC LF" -> "HOPPER")."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        return None
    chip = str(cns[0].value).split(" ", 1)[0].upper()
    if chip.startswith("GH1"):
        return "HOPPER"
    if chip.startswith("GB1") or chip.startswith("GB2"):
        return "BLACKWELL"
    if chip.replace("_", "") == "LS10":
        return "LS10"
    return None
