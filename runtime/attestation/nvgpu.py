"""NVIDIA H100/H200 (and NVSwitch) confidential-computing evidence: parse, claims, verify.

Accepted inputs (parse sniffs which):
- the raw SPDM transcript the driver returns (GET_MEASUREMENTS request || MEASUREMENTS
  response, see nvgpu_spdm), as binary or as hex text (nvtrust's sample files); the device
  certificate chain then comes from --certs;
- the NVIDIA attestation SDK's evidence list (JSON): a list of {"evidence": base64 SPDM
  transcript, "certificate": base64 PEM chain (leaf first), "arch", "nonce", ...}, one entry
  per GPU or NVSwitch, or a single such object. The chains travel inside; all entries must
  answer the same nonce (the SDK attests every device with one nonce).

Verification steps (numbered; cryptographic checks stop at the first failure):
  nvgpu.01.parse          the transcript parsed (done by parse())
  nvgpu.02.cert_chain     leaf -> ... -> NVIDIA Device Identity CA (pinned), valid at `at`
  nvgpu.03.signature      ECDSA P-384 / SHA-384 by the leaf key over request || response
                          up to the signature (SPDM 1.1 L1 transcript, as nvtrust verifies it)
  nvgpu.04.fwid           the leaf's DICE FWID equals the FWID in the signed opaque data (when
                          the firmware reports one: NVSwitches and old drivers do not; like
                          nvtrust, the comparison is then skipped, with a note)
  nvgpu.05.nonce          the signed request nonce equals the expected nonce
  nvgpu.06.rim            only with RIM collateral (nvgpu_rim.RimSet, e.g. --rim FILE): every
                          RIM's signature and chain to the RIM root (rim_invalid), the driver
                          and VBIOS RIM for each GPU's versions (rim_missing), every active
                          index equal to a golden value (rim_mismatch; gpu_cc_off when every
                          mismatched index is one the RIM names as the CC-mode configuration,
                          nvgpu_rim.CC_MODE_RESOURCE_PREFIX); claims then carry
                          rim_validated=True and the RIMs' digests
  nvgpu.07.revocation     only with OCSP responses (nvgpu_collateral.NvgpuCollateral.ocsp, fetched
                          by ocsp_fetch from NVIDIA's responder): every certificate of each device
                          path except its per-boot leaf and the root, and of each selected RIM's
                          signing path except the root, judged by ocsp.check_path; a revoked one
                          fails (cert_revoked)
With several devices each per-device step name carries "[i]". Without OCSP responses, or when a
certificate's response is missing, unsigned, stale or "unknown", the result says
revocation_checked=False and claims["revocation_unchecked"] names each such certificate and why;
it never pretends (a production policy refuses that: revocation_unchecked).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conclave.runtime.attestation import core
from conclave.runtime.attestation.core import MalformedEvidence, Reason, StepLog, TeeType, VerificationFailed
from conclave.runtime.attestation.nvgpu_chain import (ChainError, arch_from_cert, device_id, leaf_fwid,
                                                      pinned_roots, select_leaf, dedupe, subject_serial,
                                                      verify_chain)
from conclave.runtime.attestation import nvgpu_rim, ocsp
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral
from conclave.runtime.attestation.nvgpu_spdm import (NONCE_LEN, SIGNATURE_LEN, SpdmEvidence, looks_like_spdm,
                                                     parse_spdm)

TEE = TeeType.NVGPU
MAX_EVIDENCE_LEN = 4 * 1024 * 1024
MAX_DEVICES = 64
SWITCH_ARCHS = frozenset({"LS10"})
# NUL-padded ASCII opaque fields (decoded as trustee/nvtrust do); the rest stay bytes in "opaque".
_TEXT_OPAQUE = ("chip_sku", "chip_sku_mod", "project", "project_sku")
REVOCATION_NOTE = ("revocation not checked: NVIDIA device and RIM certificates are checked for revocation "
                   "only by NVIDIA's OCSP service, and no OCSP responses were given")
RIM_NOTE = ("measurements not compared with NVIDIA RIM golden values (RIM service is online); "
            "compare them with the deployment policy")


@dataclass(frozen=True)
class ParsedDevice:
    """One device's evidence. `chain` is the bundled chain (leaf first; empty for raw input),
    `declared_arch` the unsigned architecture label of the SDK JSON, if any."""

    spdm: SpdmEvidence
    chain: tuple[x509.Certificate, ...] = ()
    declared_arch: str | None = None


@dataclass(frozen=True)
class ParsedNvgpu:
    devices: tuple[ParsedDevice, ...]
    source: str  # "spdm-binary" | "spdm-hex" | "sdk-json"

    @property
    def nonce(self) -> bytes:
        return self.devices[0].spdm.nonce

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """The first device's bundled chain (the common single-GPU case)."""
        return self.devices[0].chain


# --- sniffing and parsing ------------------------------------------------------------------

def _hex_text(data: bytes) -> bytes | None:
    text = b"".join(data.split())
    if len(text) < 2 * 45 or len(text) % 2 or any(c not in string.hexdigits.encode() for c in text):
        return None
    return bytes.fromhex(text.decode("ascii"))


def _json_entries(data: bytes) -> list[dict] | None:
    stripped = data.lstrip()
    if not stripped[:1] in (b"[", b"{"):
        return None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    entries = doc if isinstance(doc, list) else [doc]
    if entries and all(isinstance(e, dict) and "evidence" in e for e in entries):
        return entries
    return None


def looks_like(data: bytes) -> bool:
    data = bytes(data[:MAX_EVIDENCE_LEN])
    if looks_like_spdm(data):
        return True
    raw = _hex_text(data)
    if raw is not None:
        return looks_like_spdm(raw)
    entries = _json_entries(data)
    if entries is None:
        return False
    try:
        return looks_like_spdm(base64.b64decode(entries[0]["evidence"], validate=True))
    except (binascii.Error, ValueError, TypeError):
        return False


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEvidence(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEvidence(f"{what} is not valid base64") from None


def decode_certificate(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Force-decode every field parse/verify later reads; MalformedEvidence if any is corrupt.

    cryptography decodes names, extensions and keys lazily, so a mutated certificate loads
    fine and only raises (ValueError, TypeError, x509.InvalidVersion, ...) when e.g.
    `cert.issuer` is first read deep inside chain building. Decoding everything once here
    keeps the contract: parse raises only MalformedEvidence, verify only AttestationError.
    """
    try:
        cert.version  # noqa: B018 - x509.InvalidVersion on an unknown version
        cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()
        cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
        cert.public_key(), cert.signature_hash_algorithm  # noqa: B018
        cert.signature_algorithm_oid, cert.signature, cert.tbs_certificate_bytes  # noqa: B018
        for ext in cert.extensions:
            ext.value  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - any decoder error means a malformed certificate
        raise MalformedEvidence(f"{what}: certificate is not well-formed ({type(exc).__name__})") from None
    return cert


def load_pem_chain(pem: bytes, what: str = "certificate chain") -> tuple[x509.Certificate, ...]:
    """PEM certificates in file order (NVIDIA ships leaf first), each fully decoded;
    MalformedEvidence if none or any is corrupt."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except Exception as exc:  # noqa: BLE001 - ValueError, x509.InvalidVersion, ...
        raise MalformedEvidence(f"{what}: not a PEM certificate chain ({type(exc).__name__})") from None
    return tuple(decode_certificate(c, f"{what} [{n}]") for n, c in enumerate(certs))


def _normalize_arch(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedEvidence("'arch' must be a non-empty string")
    return value.upper().replace("_", "")


def _parse_entry(entry: dict, i: int) -> ParsedDevice:
    spdm = parse_spdm(_b64(entry.get("evidence"), f"entry {i} 'evidence'"))
    chain: tuple[x509.Certificate, ...] = ()
    if entry.get("certificate") is not None:
        cert_field = entry["certificate"]
        if isinstance(cert_field, str) and cert_field.lstrip().startswith("-----BEGIN"):
            pem = cert_field.encode("ascii", errors="replace")
        else:
            pem = _b64(cert_field, f"entry {i} 'certificate'")
        chain = load_pem_chain(pem, f"entry {i} certificate chain")
    declared = _normalize_arch(entry.get("arch"))
    if chain and declared:
        leaf_arch = arch_from_cert(chain[0])
        if leaf_arch is not None and leaf_arch != declared:
            raise MalformedEvidence(f"entry {i}: 'arch' {declared} contradicts its certificate ({leaf_arch})")
    if "nonce" in entry:
        nonce_field = entry["nonce"]
        try:
            declared_nonce = bytes.fromhex(nonce_field) if isinstance(nonce_field, str) else None
        except ValueError:
            declared_nonce = None
        if declared_nonce != spdm.nonce:
            raise MalformedEvidence(f"entry {i}: 'nonce' differs from the nonce in its signed request")
    return ParsedDevice(spdm=spdm, chain=chain, declared_arch=declared)


def parse(data: bytes) -> ParsedNvgpu:
    """Structure only (no cryptography); MalformedEvidence on anything that is not GPU evidence."""
    data = bytes(data)
    if len(data) > MAX_EVIDENCE_LEN:
        raise MalformedEvidence(f"evidence larger than {MAX_EVIDENCE_LEN} bytes")
    if not looks_like_spdm(data) and data.lstrip()[:1] not in (b"[", b"{"):
        hex_decoded = _hex_text(data)
        if hex_decoded is not None:
            return ParsedNvgpu(devices=(ParsedDevice(spdm=parse_spdm(hex_decoded)),), source="spdm-hex")
    if looks_like_spdm(data) or data.lstrip()[:1] not in (b"[", b"{"):
        # binary (or unknown): the structural parser says precisely what is wrong
        return ParsedNvgpu(devices=(ParsedDevice(spdm=parse_spdm(data)),), source="spdm-binary")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvidence(f"evidence JSON does not parse: {exc}") from None
    entries = doc if isinstance(doc, list) else [doc]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise MalformedEvidence("evidence JSON must be an object or a non-empty list of objects")
    if len(entries) > MAX_DEVICES:
        raise MalformedEvidence(f"more than {MAX_DEVICES} devices in one evidence list")
    devices = tuple(_parse_entry(e, i) for i, e in enumerate(entries))
    if len({d.spdm.nonce for d in devices}) != 1:
        raise MalformedEvidence("the devices in the evidence list answered different nonces")
    return ParsedNvgpu(devices=devices, source="sdk-json")


# --- claims --------------------------------------------------------------------------------

def _device_claims(device: ParsedDevice, leaf: x509.Certificate | None) -> dict[str, Any]:
    spdm = device.spdm
    arch = arch_from_cert(leaf) if leaf is not None else None
    out: dict[str, Any] = {
        "version": spdm.request.spdm_version,
        "spdm_version": f"{spdm.request.spdm_version >> 4}.{spdm.request.spdm_version & 0xF}",
        "report_data": spdm.nonce,
        "nonce": spdm.nonce,
        "debug": None,  # not reported in the SPDM evidence; policies must not assume False
        "tcb_status": None,
        "gpu_arch": arch,
        "device_kind": None if arch is None else ("switch" if arch in SWITCH_ARCHS else "gpu"),
        "measurements": spdm.measurements,
        "measurement_value_types": {b.index: b.value_type for b in spdm.response.blocks},
        "driver_version": spdm.driver_version,
        "vbios_version": spdm.vbios_version,
        "fwid": spdm.fwid,
        "msrscnt": list(spdm.msrscnt) if spdm.msrscnt is not None else None,
        "opaque": dict(spdm.opaque),
        "device_serial": subject_serial(leaf) if leaf is not None else None,
        "ueid": device_id(leaf) if leaf is not None else None,
        "leaf_subject": leaf.subject.rfc4514_string() if leaf is not None else None,
        "trailing_bytes": spdm.trailing,
        "gpu_chip": chip_from_cert(leaf) if leaf is not None else None,
        "ppcie_mode": _ppcie_mode(spdm.opaque.get("protected_pcie_status")),
        "rim_validated": False,
    }
    for name in _TEXT_OPAQUE:
        raw = spdm.opaque.get(name)
        out[name] = raw.split(b"\x00", 1)[0].decode("ascii", errors="replace") if raw is not None else None
    return out


# Opaque protected_pcie_status: 0xAA in an 8x H100 HGX system in Protected PCIe mode, 0x55 on
# a single GPU outside it (nvtrust samples); anything else is unknown (None: never "on").
_PPCIE_ON, _PPCIE_OFF = b"\xaa", b"\x55"


def _ppcie_mode(raw: bytes | None) -> bool | None:
    return True if raw == _PPCIE_ON else False if raw == _PPCIE_OFF else None


def chip_from_cert(cert: x509.Certificate) -> str | None:
    """The certified chip name, first word of the leaf CN ("GH100 A01 GSP FMC LF" -> "GH100")."""
    from cryptography.x509.oid import NameOID
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value).split(" ", 1)[0].upper() if cns else None


def _bundle_claims(per_device: list[dict[str, Any]]) -> dict[str, Any]:
    """One device: its claims. Several: the claims every device agrees on, plus "devices".
    A claim on which devices differ is left out of the top level, so a policy that names it
    fails closed instead of silently judging only the first device."""
    if len(per_device) == 1:
        return per_device[0]
    first = per_device[0]
    out = {k: v for k, v in first.items() if all(d.get(k) == v for d in per_device[1:])}
    out["device_count"] = len(per_device)
    out["devices"] = per_device
    return out


def _chain_leaf(device: ParsedDevice) -> x509.Certificate | None:
    try:
        return select_leaf(dedupe(device.chain)) if device.chain else None
    except ChainError:
        return None


def claims(parsed: ParsedNvgpu) -> dict[str, Any]:
    """Normalized claims from the parsed (not yet verified) evidence."""
    return _bundle_claims([_device_claims(d, _chain_leaf(d)) for d in parsed.devices])


# --- collateral ----------------------------------------------------------------------------

def load_collateral(path: Path) -> nvgpu_rim.RimSet | NvgpuCollateral:
    """NVIDIA RIMs: one swidtag file, a directory of them, or a JSON bundle
    {"rims": [xml, ...], "ocsp": [base64 DER OCSP response, ...]} (either key; the shape this
    collateral travels in next to the evidence). Vendor-signed, so untrusted transport is fine;
    RIM signatures and OCSP responses are checked in verify()."""
    path = Path(path)
    if path.is_file():
        data = path.read_bytes()
        if data.lstrip()[:1] == b"{":
            return rim_bundle_from_json(data)
    return nvgpu_rim.load_rims([path])


def rim_bundle_json(rims: Sequence[bytes], ocsp_responses: Sequence[bytes] = ()) -> bytes:
    """The JSON bundle load_collateral reads: RIM XML documents as UTF-8 strings, OCSP
    responses as base64 DER."""
    doc: dict[str, list[str]] = {}
    if rims:
        doc["rims"] = [bytes(r).decode("utf-8") for r in rims]
    if ocsp_responses:
        doc["ocsp"] = [base64.b64encode(bytes(r)).decode("ascii") for r in ocsp_responses]
    return json.dumps(doc).encode()


def rim_bundle_from_json(data: bytes) -> nvgpu_rim.RimSet | NvgpuCollateral:
    """A RimSet for a bundle of RIMs only; NvgpuCollateral when it carries OCSP responses."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvidence("RIM bundle is not JSON") from None
    if not isinstance(doc, dict) or not ({"rims", "ocsp"} & set(doc)) or set(doc) - {"rims", "ocsp"}:
        raise MalformedEvidence("RIM bundle must be {\"rims\": [XML strings], \"ocsp\": [base64 DER]}")
    rims = doc.get("rims")
    rim_set = None
    if rims is not None:
        if not isinstance(rims, list) or not rims or not all(isinstance(r, str) for r in rims):
            raise MalformedEvidence("RIM bundle must be {\"rims\": [XML strings]}")
        rim_set = nvgpu_rim.RimSet(tuple(nvgpu_rim.parse_rim(r.encode("utf-8"), f"bundle[{i}]")
                                         for i, r in enumerate(rims)))
    if "ocsp" not in doc:
        return rim_set
    responses = doc["ocsp"]
    if not isinstance(responses, list) or not responses or len(responses) > 64:
        raise MalformedEvidence("RIM bundle 'ocsp' must be a list of 1..64 base64 DER responses")
    ders = [_b64(r, f"bundle ocsp[{i}]") for i, r in enumerate(responses)]
    return NvgpuCollateral(rims=rim_set, ocsp=ocsp.OcspResponses.of(ders))


# --- verification --------------------------------------------------------------------------

def _verify_signature(spdm: SpdmEvidence, leaf: x509.Certificate) -> str | None:
    """None when the leaf's P-384 key signed the transcript, else why not."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return "the device leaf key is not an ECDSA P-384 key"
    sig = spdm.response.signature
    if len(sig) != SIGNATURE_LEN:
        return "the signature is not 96 bytes"
    half = SIGNATURE_LEN // 2
    der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
    try:
        key.verify(der, spdm.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return "the SPDM measurement signature does not verify with the device leaf key"
    return None


def verify(parsed: ParsedNvgpu, *, at: datetime, certs: Sequence[x509.Certificate] = (),
           collateral: object | None = None, nonce: bytes | None = None,
           trusted_roots: Sequence[x509.Certificate] | None = None,
           rim_roots: Sequence[x509.Certificate] | None = None) -> core.VerifiedEvidence:
    """rim_roots: the RIM signing root(s); None = NVIDIA's pinned root (tests and emulated GPUs
    pass their test root here, never through evidence or collateral bytes)."""
    if not isinstance(parsed, ParsedNvgpu):
        raise TypeError("verify() takes the result of nvgpu.parse()")
    if at.tzinfo is None:
        raise ValueError("verification time must be timezone-aware (UTC)")
    try:
        gathered = NvgpuCollateral.of(collateral)
    except TypeError:
        raise VerificationFailed(Reason.UNSUPPORTED,
                                 "nvgpu collateral must be NVIDIA RIMs and/or OCSP responses") from None
    rims = gathered.rims
    roots = tuple(trusted_roots) if trusted_roots is not None else pinned_roots()
    # --certs come from outside the evidence but are just as untrusted: same decoding,
    # same MalformedEvidence(malformed) as a corrupt certificate inside the evidence.
    certs = tuple(decode_certificate(c, f"--certs [{n}]") for n, c in enumerate(certs))
    log = StepLog()
    log.ok("nvgpu.01.parse")
    many = len(parsed.devices) > 1
    per_device: list[dict[str, Any]] = []
    notes = ([REVOCATION_NOTE] if gathered.ocsp is None else []) + ([] if rims is not None else [RIM_NOTE])
    leaves: list[x509.Certificate] = []
    paths: list[list[x509.Certificate]] = []
    for i, device in enumerate(parsed.devices):
        tag = f"[{i}]" if many else ""
        step = f"nvgpu.02.cert_chain{tag}"
        try:
            path = verify_chain(device.chain, tuple(certs), roots, at)
        except ChainError as exc:
            raise log.fail(step, exc.reason, f"device {i}: {exc.message}" if many else exc.message) from None
        log.ok(step)
        leaf = path[0]
        paths.append(path)

        step = f"nvgpu.03.signature{tag}"
        problem = _verify_signature(device.spdm, leaf)
        if problem:
            raise log.fail(step, Reason.SIGNATURE_INVALID, problem)
        log.ok(step)

        step = f"nvgpu.04.fwid{tag}"
        reported = device.spdm.fwid
        if reported is None:
            # As nvtrust does: firmware that reports no FWID (NVSwitch, older GPU drivers) gets no
            # comparison. The step is not marked ok; the note says so and claims carry fwid=None.
            notes.append(f"device {i}: no FWID in the signed opaque data; certificate/firmware FWID "
                         "binding not checked")
        else:
            try:
                certified = leaf_fwid(leaf)
            except ChainError as exc:
                raise log.fail(step, exc.reason, exc.message) from None
            if not hmac.compare_digest(certified, reported):
                raise log.fail(step, Reason.CHAIN_UNTRUSTED,
                               "the FWID certified in the device leaf differs from the firmware's reported FWID")
            log.ok(step)
        leaves.append(leaf)
        per_device.append(_device_claims(device, leaf))

    if nonce is not None:
        if len(nonce) != NONCE_LEN or not hmac.compare_digest(bytes(nonce), parsed.nonce):
            raise log.fail("nvgpu.05.nonce", Reason.NONCE_MISMATCH,
                           "the GPU signed a different nonce than the one expected")
        log.ok("nvgpu.05.nonce")
    else:
        notes.append("nonce not compared (none expected was given): bind report_data with check_binding")
    rim_paths: list[tuple[x509.Certificate, ...]] = []
    if rims is not None:
        rim_paths = _check_rims(log, parsed, leaves, per_device, rims, at=at, rim_roots=rim_roots, many=many)
    revocation = _check_revocation(log, paths, rim_paths, gathered.ocsp, at=at)
    unchecked = [f"{s.subject}: {s.why}" for s in revocation.unchecked]
    if gathered.ocsp is not None and unchecked:
        notes.append("revocation not checked for " + "; ".join(unchecked))
    checked = gathered.ocsp is not None and revocation.checked
    oldest = revocation.oldest_this_update if checked else None
    trailing = sum(d.spdm.trailing for d in parsed.devices)
    if trailing:
        notes.append(f"{trailing} unsigned byte(s) after the signature ignored")
    bundle = _bundle_claims(per_device)
    bundle["revocation_unchecked"] = unchecked
    return core.VerifiedEvidence(
        tee=TEE, report_data=parsed.nonce, claims=bundle, verified_at=at,
        simulated=False, steps=tuple(log.steps), tcb_status=None, revocation_checked=checked,
        notes=tuple(notes), collateral_age_s=None if oldest is None else max(0.0, (at - oldest).total_seconds()),
        _issuer=core._ISSUER)


def _check_revocation(log: StepLog, paths: Sequence[Sequence[x509.Certificate]],
                      rim_paths: Sequence[Sequence[x509.Certificate]], responses: ocsp.OcspResponses | None,
                      *, at: datetime) -> ocsp.RevocationResult:
    """Step nvgpu.07.revocation: OCSP status of the device paths (per-boot leaf skipped, as
    NVIDIA's responder never knows it) and the selected RIMs' signing paths."""
    given = responses if responses is not None else ocsp.OcspResponses()
    result = ocsp.RevocationResult(())
    for path in paths:
        result += ocsp.check_path(path, given, at, skip_leaf=True)
    for path in rim_paths:
        result += ocsp.check_path(path, given, at, skip_leaf=False)
    if result.revoked:
        raise log.fail("nvgpu.07.revocation", Reason.CERT_REVOKED,
                       "; ".join(f"{s.subject} is {s.why}" for s in result.revoked))
    if responses is not None and result.checked:
        log.ok("nvgpu.07.revocation")
    return result


def _check_rims(log: StepLog, parsed: ParsedNvgpu, leaves: list[x509.Certificate], per_device: list[dict],
                rims: nvgpu_rim.RimSet, *, at: datetime, rim_roots, many: bool) -> list[tuple[x509.Certificate, ...]]:
    """Step nvgpu.06.rim: verify every RIM, select each GPU's driver and VBIOS RIM, compare.
    Returns the signing paths of the selected RIMs (for the revocation step)."""
    step = "nvgpu.06.rim"
    try:
        verified = [nvgpu_rim.verify_rim(r, at=at, roots=rim_roots) for r in rims.rims]
    except VerificationFailed as exc:
        raise log.fail(step, Reason(exc.reason), exc.message) from None
    mismatches: list[nvgpu_rim.Mismatch] = []
    used: dict[bytes, tuple[x509.Certificate, ...]] = {}
    for i, (device, leaf, claims_i) in enumerate(zip(parsed.devices, leaves, per_device)):
        spdm = device.spdm
        try:
            chosen = nvgpu_rim.select_rims(
                verified, driver_version=spdm.driver_version, vbios_version=spdm.vbios_version,
                product=chip_from_cert(leaf), vbios_id=nvgpu_rim.vbios_rim_id(spdm.opaque, spdm.vbios_version))
            found = nvgpu_rim.compare((chosen.driver, chosen.vbios), spdm.measurements)
        except VerificationFailed as exc:
            raise log.fail(step, Reason(exc.reason), f"device {i}: {exc.message}" if many else exc.message) from None
        mismatches.extend(found)
        for rim in (chosen.driver, chosen.vbios):
            used.setdefault(rim.raw, rim.signing_path)
        claims_i["rim_validated"] = not found
        claims_i["rim_driver_sha256"] = nvgpu_rim.rim_digest(chosen.driver)
        claims_i["rim_vbios_sha256"] = nvgpu_rim.rim_digest(chosen.vbios)
    if mismatches:
        log.steps.append(core.Step(step, False))
        indices = sorted({m.spdm_index for m in mismatches})
        if all(m.cc_mode_configuration for m in mismatches):
            raise nvgpu_rim.RimMismatch(mismatches, f"GPU measurement(s) {indices}: the CC-mode configuration the "
                                        "RIM names differs from its golden value (GPU not in CC mode)",
                                        steps=log.steps, reason=Reason.GPU_CC_OFF)
        raise nvgpu_rim.RimMismatch(mismatches, f"GPU measurement(s) {indices} differ from NVIDIA's RIM golden values",
                                    steps=log.steps)
    log.ok(step)
    return list(used.values())
