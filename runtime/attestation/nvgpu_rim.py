"""NVIDIA RIMs (Reference Integrity Manifests): parse, verify the signature chain, select, compare.

A RIM is an ISO/IEC 19770-2 SWID tag (TCG RIM information model) that NVIDIA signs with an
enveloped XML signature (ECDSA P-384 / SHA-384, C14N 1.1) whose KeyInfo carries the chain
"HCC RIM L4 Signer" -> "NVIDIA Reference Value L3 GH100 001" -> "NVIDIA Reference Value GH100 CA"
-> "NVIDIA CoRIM signing Root CA". NVIDIA publishes one RIM per driver version and one per VBIOS
(board project, SKU, chip SKU and version). Each lists golden SHA-384 values per measurement
index; a runtime value matches when it equals any `HashK` alternative.

Pipeline (every step fails closed, with a stable reason):
  parse_rim     XML structure, no signature yet                      -> malformed
  verify_rim    XML-DSig (signxml) with the KeyInfo leaf, then the
                chain leaf -> ... -> pinned RIM root, valid at `at`   -> rim_invalid
  select_rims   the driver RIM whose version equals the evidence's
                driver version, the VBIOS RIM whose version equals
                the evidence's VBIOS version (same chip product)     -> rim_missing
  compare       every active index against the SPDM block index+1    -> rim_mismatch
Measurements are read only from the XML that the signature covers (signxml's signed_xml),
never from the document as received ("see what is signed").

Project, project SKU and chip SKU are not inside the signed SWID tag: they name the VBIOS RIM
to fetch (vbios_rim_id, the RIM service's file id). A RIM of another board with the same VBIOS
version is caught by the measurement comparison.

The RIM root is a parameter (`roots`): production uses the pinned NVIDIA root; emulated GPUs
and tests pass their own test root, never through evidence or collateral bytes.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

from cryptography import x509

from conclave.runtime.attestation.core import MalformedEvidence, Reason, VerificationFailed
from conclave.runtime.attestation.nvgpu_chain import ChainError, build_path, check_path, dedupe, fingerprint

ROOTS_DIR = Path(__file__).resolve().parent / "roots"
# SHA-256 over the DER of NVIDIA's "CoRIM signing Root CA" (nvtrust verifier_RIM_root.pem,
# NVIDIA/nvtrust @ 028173093d43dbf37364bdc39ad7e696bccbce2e); a file that does not match is refused.
RIM_ROOT_FILE = "nvidia_rim_root.pem"
RIM_ROOT_FINGERPRINT = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
MAX_RIM_LEN = 1024 * 1024
MAX_MEASUREMENT_INDEX = 255
MAX_KEYINFO_CERTS = 8
_HASH_ATTR = re.compile(r"^(?:\{[^}]*\})?Hash(\d{1,2})$")
_VBIOS_VERSION = re.compile(r"^[0-9a-f]{2}(\.[0-9a-f]{2}){4}$")
_DRIVER_VERSION = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4}){1,3}$")
KIND_DRIVER = "driver"
KIND_VBIOS = "vbios"


@dataclass(frozen=True)
class RimMeasurement:
    """One golden value set: RIM index (0-based; SPDM block = index + 1) and its alternatives."""

    index: int
    active: bool
    alternatives: tuple[bytes, ...]
    name: str | None = None


@dataclass(frozen=True)
class Rim:
    """A parsed RIM. `raw` is what was received; `measurements` come from the signed XML once
    verify_rim has run (before that, from the received document: never compare those)."""

    raw: bytes
    label: str
    kind: str  # "driver" | "vbios"
    version: str  # lowercase colloquialVersion
    product: str | None
    tag_id: str | None
    measurements: tuple[RimMeasurement, ...]
    keyinfo_certs: tuple[x509.Certificate, ...]
    verified: bool = False
    # the checked signing path (signer first, RIM root last); set by verify_rim, for OCSP
    signing_path: tuple[x509.Certificate, ...] = ()

    @property
    def active(self) -> Mapping[int, RimMeasurement]:
        return MappingProxyType({m.index: m for m in self.measurements if m.active})


@dataclass(frozen=True)
class RimSet:
    """The RIMs offered for one verification (nvgpu collateral). Unverified until verify()."""

    rims: tuple[Rim, ...]

    def __post_init__(self) -> None:
        if not self.rims:
            raise MalformedEvidence("no RIM given")


# Resource name prefix by which a RIM marks an index as the GPU's measured CC-mode configuration:
# a mismatch only at such indices is reported gpu_cc_off (the GPU is outside CC mode) instead of
# rim_mismatch. NVIDIA's published RIMs name no such index (a real GPU outside CC mode therefore
# shows rim_mismatch); the emulated H100s' test RIMs do (emulated/nvgpu_device). Either way it fails.
CC_MODE_RESOURCE_PREFIX = "ConclaveCcModeConfiguration_"


@dataclass(frozen=True)
class Mismatch:
    """An active RIM index whose runtime value is none of its golden alternatives."""

    spdm_index: int
    rim: str
    expected: tuple[str, ...]
    actual: str | None
    name: str | None = None   # the RIM resource's name

    @property
    def cc_mode_configuration(self) -> bool:
        return bool(self.name) and self.name.startswith(CC_MODE_RESOURCE_PREFIX)

    def to_json(self) -> dict:
        return {"index": self.spdm_index, "rim_index": self.spdm_index - 1, "rim": self.rim,
                "expected": list(self.expected), "actual": self.actual}


class RimMismatch(VerificationFailed):
    """rim_mismatch (gpu_cc_off when every mismatched index is the RIM's CC-mode configuration),
    with every mismatched index (SPDM numbering) for the CLI's JSON."""

    def __init__(self, mismatches: Sequence[Mismatch], message: str, *, steps=None,
                 reason: Reason = Reason.RIM_MISMATCH):
        super().__init__(reason, message, steps=steps)
        self.mismatches = tuple(mismatches)

    @property
    def indices(self) -> list[int]:
        return sorted({m.spdm_index for m in self.mismatches})


# --- roots ---------------------------------------------------------------------------------

def pinned_rim_roots(roots_dir: Path = ROOTS_DIR) -> tuple[x509.Certificate, ...]:
    """NVIDIA's RIM signing root, checked against its pinned fingerprint (fail closed)."""
    try:
        cert = x509.load_pem_x509_certificate((roots_dir / RIM_ROOT_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise VerificationFailed(Reason.RIM_INVALID, f"embedded NVIDIA RIM root cannot be loaded: {exc}") from None
    if fingerprint(cert) != RIM_ROOT_FINGERPRINT:
        raise VerificationFailed(Reason.RIM_INVALID, "embedded NVIDIA RIM root does not match its pinned fingerprint")
    return (cert,)


# --- parsing -------------------------------------------------------------------------------

def _parser():
    from lxml import etree
    # No entities, no DTD loading, no network: a RIM is data, never a fetch instruction.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                           remove_comments=False)


def _xml_root(data: bytes, label: str):
    from lxml import etree
    if len(data) > MAX_RIM_LEN:
        raise MalformedEvidence(f"RIM {label} is larger than {MAX_RIM_LEN} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise MalformedEvidence(f"RIM {label}: document type declarations are refused")
    try:
        return etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedEvidence(f"RIM {label} is not well-formed XML: {exc}") from None


def _measurements(root, label: str) -> tuple[RimMeasurement, ...]:
    payload = root.find(f"{{{SWID_NS}}}Payload")
    if payload is None:
        raise MalformedEvidence(f"RIM {label} has no Payload")
    out: list[RimMeasurement] = []
    seen: set[int] = set()
    for res in payload.iter(f"{{{SWID_NS}}}Resource"):
        if res.get("type") != "Measurement":
            continue
        try:
            index = int(res.get("index", ""))
        except ValueError:
            raise MalformedEvidence(f"RIM {label}: a measurement has no integer index") from None
        if not 0 <= index <= MAX_MEASUREMENT_INDEX or index in seen:
            raise MalformedEvidence(f"RIM {label}: measurement index {index} out of range or repeated")
        seen.add(index)
        active = res.get("active")
        if active not in ("True", "False"):
            raise MalformedEvidence(f"RIM {label}: measurement {index} 'active' is not True/False")
        alts: dict[int, bytes] = {}
        for name, value in res.attrib.items():
            m = _HASH_ATTR.match(name)
            if m:
                try:
                    alts[int(m.group(1))] = bytes.fromhex(value)
                except ValueError:
                    raise MalformedEvidence(f"RIM {label}: measurement {index} {name} is not hex") from None
        declared = res.get("alternatives")
        if not alts or (declared is not None and declared != str(len(alts))):
            raise MalformedEvidence(f"RIM {label}: measurement {index} alternatives do not match its Hash values")
        out.append(RimMeasurement(index, active == "True", tuple(alts[k] for k in sorted(alts)), res.get("name")))
    if not out:
        raise MalformedEvidence(f"RIM {label} lists no measurements")
    return tuple(sorted(out, key=lambda m: m.index))


def _kind(version: str, label: str) -> str:
    if _VBIOS_VERSION.match(version):
        return KIND_VBIOS
    if _DRIVER_VERSION.match(version):
        return KIND_DRIVER
    raise MalformedEvidence(f"RIM {label}: version {version!r} is neither a driver nor a VBIOS version")


def _keyinfo_certs(root, label: str) -> tuple[x509.Certificate, ...]:
    sig = root.find(f"{{{DSIG_NS}}}Signature")
    if sig is None:
        raise MalformedEvidence(f"RIM {label} is not signed (no enveloped ds:Signature)")
    certs = []
    for node in sig.iterfind(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate"):
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode("".join((node.text or "").split()),
                                                                            validate=True)))
        except (binascii.Error, ValueError):
            raise MalformedEvidence(f"RIM {label}: a KeyInfo certificate is not base64 DER") from None
    if not certs or len(certs) > MAX_KEYINFO_CERTS:
        raise MalformedEvidence(f"RIM {label}: KeyInfo must carry 1..{MAX_KEYINFO_CERTS} certificates")
    from conclave.runtime.attestation.nvgpu import decode_certificate
    return tuple(decode_certificate(c, f"RIM {label} KeyInfo [{n}]") for n, c in enumerate(certs))


def _identity(root, label: str) -> tuple[str, str | None, str | None]:
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise MalformedEvidence(f"RIM {label}: root element is not a SWID SoftwareIdentity")
    meta = root.find(f"{{{SWID_NS}}}Meta")
    version = (meta.get("colloquialVersion") if meta is not None else None) or ""
    if not version:
        raise MalformedEvidence(f"RIM {label} has no Meta colloquialVersion")
    product = meta.get("product") or root.get("name")
    return version.strip().lower(), (product.strip().upper() if product else None), root.get("tagId")


def parse_rim(data: bytes, label: str = "rim") -> Rim:
    """Structure only: identity, measurements and KeyInfo chain; MalformedEvidence otherwise."""
    data = bytes(data)
    root = _xml_root(data, label)
    version, product, tag_id = _identity(root, label)
    return Rim(raw=data, label=label, kind=_kind(version, label), version=version, product=product,
               tag_id=tag_id, measurements=_measurements(root, label), keyinfo_certs=_keyinfo_certs(root, label))


def load_rims(paths: Iterable[Path]) -> RimSet:
    """RIM files (and directories of *.swidtag / *.xml files) into a RimSet."""
    rims = []
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.iterdir() if p.suffix in (".swidtag", ".xml")) if path.is_dir() else [path]
        for f in files:
            try:
                data = f.read_bytes()
            except OSError as exc:
                raise MalformedEvidence(f"cannot read RIM {f}: {exc.strerror or exc}") from None
            rims.append(parse_rim(data, f.name))
    return RimSet(tuple(rims))


# --- signature and chain -------------------------------------------------------------------

def verify_rim(rim: Rim, *, at: datetime, roots: Sequence[x509.Certificate] | None = None) -> Rim:
    """The RIM with measurements re-read from the signed XML; VerificationFailed(rim_invalid)."""
    from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier
    from signxml.exceptions import SignXMLException
    roots = tuple(roots) if roots is not None else pinned_rim_roots()
    leaf, *rest = rim.keyinfo_certs
    try:
        path = build_path(leaf, dedupe(rest), roots)
        check_path(path, at)
    except ChainError as exc:
        raise VerificationFailed(Reason.RIM_INVALID, f"RIM {rim.label}: signing chain: {exc.message}") from None
    config = SignatureConfiguration(location="./", expect_references=1,
                                    signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
                                    digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
                                    verification_time=at)
    try:
        result = XMLVerifier().verify(rim.raw, x509_cert=leaf, expect_config=config, parser=_parser())
    except (SignXMLException, ValueError) as exc:
        raise VerificationFailed(Reason.RIM_INVALID,
                                 f"RIM {rim.label}: XML signature does not verify ({type(exc).__name__})") from None
    signed = result.signed_xml
    version, product, tag_id = _identity(signed, rim.label)
    if (version, product) != (rim.version, rim.product):
        raise VerificationFailed(Reason.RIM_INVALID, f"RIM {rim.label}: signed identity differs from the document")
    return Rim(raw=rim.raw, label=rim.label, kind=_kind(version, rim.label), version=version, product=product,
               tag_id=tag_id, measurements=_measurements(signed, rim.label), keyinfo_certs=rim.keyinfo_certs,
               verified=True, signing_path=tuple(path))


# --- selection and comparison --------------------------------------------------------------

def vbios_rim_id(opaque: Mapping[str, bytes], vbios_version: str | None) -> str | None:
    """NVIDIA RIM service file id of the VBIOS RIM for this board and version (for fetching)."""
    def text(name: str) -> str | None:
        raw = opaque.get(name)
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").upper() if raw else None
    parts = [text("project"), text("project_sku"), text("chip_sku")]
    if None in parts or not vbios_version:
        return None
    return "NV_GPU_VBIOS_" + "_".join(parts) + "_" + vbios_version.replace(".", "").upper()


def driver_rim_id(driver_version: str | None) -> str | None:
    return f"NV_GPU_DRIVER_GH100_{driver_version}" if driver_version else None


@dataclass(frozen=True)
class Selection:
    driver: Rim
    vbios: Rim


def select_rims(rims: Sequence[Rim], *, driver_version: str | None, vbios_version: str | None,
                product: str | None, vbios_id: str | None = None) -> Selection:
    """The driver and the VBIOS RIM for this evidence; VerificationFailed(rim_missing)."""
    def pick(kind: str, version: str | None, what: str, fetch_id: str | None) -> Rim:
        wanted = (version or "").lower()
        found = [r for r in rims if r.kind == kind and r.version == wanted
                 and (product is None or r.product is None or r.product == product)]
        if not wanted or not found:
            offered = sorted({r.version for r in rims if r.kind == kind}) or ["none"]
            hint = f" (NVIDIA RIM id {fetch_id})" if fetch_id else ""
            raise VerificationFailed(Reason.RIM_MISSING,
                                     f"no {what} RIM for version {version or '(not reported)'}{hint}; "
                                     f"given {what} RIM versions: {', '.join(offered)}")
        return found[0]
    return Selection(driver=pick(KIND_DRIVER, driver_version, "driver", driver_rim_id(driver_version)),
                     vbios=pick(KIND_VBIOS, vbios_version, "VBIOS", vbios_id))


def compare(rims: Sequence[Rim], measurements: Mapping[int, bytes]) -> list[Mismatch]:
    """Every active index of every RIM against the runtime blocks (RIM index i = SPDM block i+1).

    Two RIMs with an active entry at the same index is a conflict in the reference values
    (nvtrust refuses it too): VerificationFailed(rim_invalid).
    """
    owner: dict[int, str] = {}
    out: list[Mismatch] = []
    for rim in rims:
        for index, m in rim.active.items():
            if index in owner:
                raise VerificationFailed(Reason.RIM_INVALID,
                                         f"RIMs {owner[index]} and {rim.label} both set measurement index {index}")
            owner[index] = rim.label
            actual = measurements.get(index + 1)
            if actual is None or actual not in m.alternatives:
                out.append(Mismatch(index + 1, rim.label, tuple(a.hex() for a in m.alternatives),
                                    actual.hex() if actual is not None else None, m.name))
    return sorted(out, key=lambda x: x.spdm_index)


def rim_digest(rim: Rim) -> str:
    """SHA-256 of the RIM as received (names the reference used, for audit logs and claims)."""
    return hashlib.sha256(rim.raw).hexdigest()
