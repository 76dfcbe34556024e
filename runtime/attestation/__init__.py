"""Hardware attestation: parse -> verify -> validate, for TDX, SEV-SNP, NVIDIA GPU and simulated TEEs.

This module dispatches to the format modules (tdx, snp, nvgpu, sim), imported lazily so that
a caller handling only simulated evidence never loads the others, and so that a format module
that fails to import does not take the whole package down. Each format module exposes
TEE, looks_like, parse, claims, load_collateral and verify (see the interface contract).
"""
from __future__ import annotations

import importlib
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from cryptography import x509

from conclave.runtime.attestation.core import (AttestationError, MalformedEvidence, PolicyError,
                                               PolicyViolated, Reason, TeeType, VerificationFailed,
                                               VerifiedEvidence, Violation)

__all__ = [
    "AttestationError", "MalformedEvidence", "PolicyError", "PolicyViolated", "Reason", "TeeType",
    "VerificationFailed", "VerifiedEvidence", "Violation",
    "format_module", "detect_tee", "parse", "claims", "load_collateral", "verify_evidence",
]

# Detection order: cheap, unambiguous sniffers first (sim is JSON with a format tag).
DETECTION_ORDER = (TeeType.SIM, TeeType.NVGPU, TeeType.TDX, TeeType.SNP)


def format_module(tee: TeeType | str) -> ModuleType:
    """The format module for `tee` (imported on first use)."""
    try:
        tee = TeeType(tee)
    except ValueError:
        raise AttestationError(Reason.UNSUPPORTED, f"unknown TEE type {tee!r}") from None
    name = f"{__name__}.{tee.value}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise AttestationError(Reason.UNSUPPORTED,
                                   f"TEE format {tee.value} is not available in this build") from None
        raise


def detect_tee(data: bytes) -> TeeType:
    """Guess the evidence format from its bytes; MalformedEvidence when nothing matches."""
    for tee in DETECTION_ORDER:
        try:
            module = format_module(tee)
        except AttestationError:
            continue
        try:
            if module.looks_like(data):
                return tee
        except Exception:  # a sniffer must never decide by crashing; treat as "not this format"
            continue
    raise MalformedEvidence("cannot tell the evidence format (pass --tee)")


def parse(data: bytes, tee: TeeType | str | None = None) -> tuple[TeeType, Any]:
    """(TEE type, format-specific parsed evidence). Structure only; raises MalformedEvidence."""
    tee = TeeType(tee) if tee is not None else detect_tee(data)
    return tee, format_module(tee).parse(bytes(data))


def claims(tee: TeeType | str, parsed: Any) -> dict[str, Any]:
    return format_module(tee).claims(parsed)


def load_collateral(tee: TeeType | str, path: Path) -> object:
    return format_module(tee).load_collateral(Path(path))


def load_collateral_bytes(tee: TeeType | str, blob: bytes | None) -> object | None:
    """Collateral that travelled with the evidence (vendor-signed, so untrusted transport is fine),
    parsed from the bytes themselves (no file round trip; the shapes of collateral_share and of
    nvgpu.rim_bundle_json): TDX one QuoteCollateralV3 JSON, SNP one PEM bundle of certificates
    and CRLs, NVIDIA a RIM bundle JSON or one RIM swidtag. Simulated evidence takes none."""
    if not blob:
        return None
    tee = TeeType(tee)
    data = bytes(blob)
    if tee == TeeType.TDX:
        from conclave.runtime.attestation.tdx_collateral import collateral_from_v3_json
        return collateral_from_v3_json(data, source="collateral shipped with the evidence")
    if tee == TeeType.SNP:
        from conclave.runtime.attestation.snp_collateral import parse_collateral_bytes
        return parse_collateral_bytes([("collateral shipped with the evidence", data)])
    if tee == TeeType.NVGPU:
        from conclave.runtime.attestation import nvgpu, nvgpu_rim
        if data.lstrip()[:1] == b"{":
            return nvgpu.rim_bundle_from_json(data)
        return nvgpu_rim.RimSet((nvgpu_rim.parse_rim(data, "rim shipped with the evidence"),))
    raise VerificationFailed(Reason.COLLATERAL_INVALID, f"{tee.value} evidence takes no collateral")


def verify_evidence(data: bytes, *, tee: TeeType | str | None = None, at: datetime,
                    certs: Sequence[x509.Certificate] = (), collateral: object | None = None,
                    nonce: bytes | None = None,
                    trusted_roots: Sequence[x509.Certificate] | None = None,
                    rim_roots: Sequence[x509.Certificate] | None = None) -> VerifiedEvidence:
    """parse + verify in one call (verification time and collateral come from the caller).

    rim_roots: nvgpu only, the RIM signing roots (None: NVIDIA's pinned RIM root; emulated GPUs
    pass their test root). GPU collateral (RIMs, OCSP responses) is fetched beforehand, e.g. by
    nvgpu_collateral_source.GpuCollateralSource.collateral_for, and passed as `collateral`."""
    tee, parsed = parse(data, tee)
    extra = {"rim_roots": rim_roots} if tee == TeeType.NVGPU and rim_roots is not None else {}
    return format_module(tee).verify(parsed, at=at, certs=tuple(certs), collateral=collateral,
                                     nonce=nonce, trusted_roots=trusted_roots, **extra)
