"""Seeds, mutators and the tamper oracle shared by the Hypothesis fuzz tests and the fuzz scripts.

`only_unsigned_parts_changed` is the oracle for a mutated seed that verify() ACCEPTED: it is true
only when every byte the format authenticates is unchanged, i.e. the mutation touched nothing but
the regions named below as unsigned or ignored by design. Anything else is a verifier that let
tampered evidence through."""
from __future__ import annotations

import base64
import binascii
import json
import random
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from conclave.runtime.attestation import sim
from conclave.runtime.attestation.core import TeeType

SIM_NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)


@dataclass
class Seed:
    tee: TeeType
    name: str
    data: bytes
    at: datetime
    certs: tuple[x509.Certificate, ...] = ()
    trusted_roots: tuple[x509.Certificate, ...] | None = None
    nonce: bytes | None = None
    collateral: Any = None
    extra: dict = field(default_factory=dict)


def _pem_certs(path: Path) -> tuple[x509.Certificate, ...]:
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN" in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)


def seeds(vectors: Path | None) -> list[Seed]:
    """Real vectors (when present) plus freshly signed simulated evidence."""
    root = sim.SimulatedRoot.generate("fuzz-root", now=SIM_NOW)
    att = root.issue_attester("fuzz-node", measurement=bytes(range(48)), now=SIM_NOW)
    out = [Seed(TeeType.SIM, "sim", att.evidence(bytes(64), now=SIM_NOW), SIM_NOW,
                trusted_roots=(root.certificate,))]
    if vectors is None or not vectors.is_dir():
        return out
    from conclave.runtime.attestation import tdx
    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    up = vectors / "tdx/dcap-qvl-v4-uptodate"
    out.append(Seed(TeeType.TDX, "tdx-v4-uptodate", (up / "quote.bin").read_bytes(), t("2025-07-19T10:00:34Z"),
                    collateral=tdx.load_collateral(up / "collateral.json")))
    v5 = vectors / "tdx/dcap-qvl-v5-no-tcb-match"
    out.append(Seed(TeeType.TDX, "tdx-v5", (v5 / "quote.bin").read_bytes(), t("2026-03-20T10:41:14Z")))
    gcp = vectors / "tdx/go-tdx-guest-gcp-cos113-ccel"
    out.append(Seed(TeeType.TDX, "tdx-gcp", (gcp / "quote.bin").read_bytes(), t("2025-01-01T00:00:00Z")))
    for name, ek, chain, at in (
            ("go-sev-guest-milan-v2", "vcek.der", "ask_ark_milan.pem", "2022-09-24T01:00:00Z"),
            ("trustee-milan-v3-vlek-aws", "vlek.der", "ask_ark_asvk_milan.pem", "2025-06-01T00:00:00Z")):
        d = vectors / "snp" / name
        out.append(Seed(TeeType.SNP, f"snp-{name}", (d / "report.bin").read_bytes(), t(at),
                        certs=_pem_certs(d / ek) + _pem_certs(d / chain)))
    h = vectors / "nvgpu/nvtrust-h100-sample"
    out.append(Seed(TeeType.NVGPU, "nvgpu-h100", (h / "evidence.bin").read_bytes(), t("2025-01-01T00:00:00Z"),
                    certs=_pem_certs(h / "cert_chain.pem"),
                    nonce=bytes.fromhex((h / "nonce.hex").read_text().strip())))
    p = vectors / "nvgpu/nvtrust-ppcie-8xh100/gpu_evidence.json"
    out.append(Seed(TeeType.NVGPU, "nvgpu-ppcie-json", p.read_bytes(), t("2025-01-01T00:00:00Z")))
    return out


INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def mutate(data: bytes, rng: random.Random, *, max_ops: int = 4) -> bytes:
    """Byte flips, interesting values, truncation, extension, duplication and splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(8)
        n = len(buf)
        if op == 0 and n:
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 2 and n:
            del buf[rng.randrange(n):]
        elif op == 3:
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 4 and n >= 4:
            i = rng.randrange(n - 3)  # a length-like field set to something large / small
            buf[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x10\x00\x00",
                                       b"\xff\xff\x00\x00"])
        elif op == 5 and n:
            i, j = sorted(rng.randrange(n + 1) for _ in range(2))
            buf[i:i] = buf[i:j][:256]
        elif op == 6 and n:
            i, j = sorted(rng.randrange(n + 1) for _ in range(2))
            del buf[i:j]
        elif op == 7 and n:
            # text-level mutation for JSON/hex inputs: replace a character with a structural one
            buf[rng.randrange(n)] = rng.choice(b'{}[]":,0aZ\\')
    return bytes(buf)


# ---------------------------------------------------------------------------- tamper oracle
SNP_REPORT_SIZE = 0x4A0  # AMD SEV-SNP ABI, ATTESTATION_REPORT: fixed 1184 bytes, signature included
PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def only_unsigned_parts_changed(seed: Seed, data: bytes) -> bool:
    """True when `data` (a mutation of `seed.data` that verify accepted) differs from the seed only
    in regions no signature covers and the verifier ignores by design; False otherwise.

    Unsigned or ignored regions, per format (everything else must be byte-identical):
    - all binary formats: bytes appended after the structure's declared end (the TDX quote's
      signature-data length, the SNP report's fixed size, the SPDM response's signature, which
      is its last field). No signature covers them and the parsers drop them.
    - TDX: the PEM text of the PCK chain in the QE certification data. The quote signature does
      not cover it; its certificates are authenticated by their own X.509 signatures up to the
      pinned Intel root. PEM armour, NUL padding and a repeated copy of a certificate are
      encoding only, and the embedded root copy may be lost (a damaged PEM block is skipped by
      the decoder): the verifier anchors on its pinned roots. So the decoded chain must keep the
      same leaf and every non-self-signed certificate, and hold no certificate the seed lacks.
    - SNP: the GHCB certificate table after the report (the report signature ends at 0x4A0; its
      certificates are checked against the pinned AMD roots, and these seeds pass theirs apart).
    - NVIDIA SDK JSON: the wrapper fields (version, driver_version, vbios_version, the nonce
      hint, which parse() only cross-checks against the signed request) are unsigned metadata,
      and so is the list (whole devices may be left out; how many GPUs a node must show is the
      policy's question). Each device's SPDM transcript must be equal and its chain keep the same leaf and
      every non-self-signed certificate. The embedded root copy may be altered or lost: the
      verifier builds the path to its pinned NVIDIA roots and ignores certificates off that path.
    - simulated evidence and NVIDIA SDK JSON: the unused low bits of a base64 string's last
      quantum ("fQ==" and "fZ==" decode to the same byte). Signatures cover the decoded bytes,
      so the decoded payload, signature and certificates must be equal; nothing else may differ.
    """
    original = seed.data
    if data == original:
        return True
    if seed.tee == TeeType.SNP:
        return data[:SNP_REPORT_SIZE] == original[:SNP_REPORT_SIZE]
    if seed.tee == TeeType.TDX:
        return _tdx_unsigned_only(original, data)
    if seed.tee == TeeType.NVGPU:
        if original.lstrip()[:1] in (b"[", b"{"):
            return _nvgpu_json_unsigned_only(original, data)
        return data.startswith(original)
    if seed.tee == TeeType.SIM:
        return _sim_unsigned_only(original, data)
    return False


def _tdx_unsigned_only(original: bytes, data: bytes) -> bool:
    """Everything before the PCK chain's PEM is bound (header, body, signatures, keys, QE report,
    the sizes); the PEM is the nested certification data's last field, its size the u32 before it."""
    start = original.find(PEM_BEGIN)
    if start < 4:
        return data.startswith(original)
    if data[:start] != original[:start]:
        return False
    end = start + int.from_bytes(original[start - 4:start], "little")
    # the sizes are unchanged, so the chain occupies the same span; bytes after it are trailing
    return _same_chain(original[start:end], data[start:end], extra_allowed=False)


def _sim_unsigned_only(original: bytes, data: bytes) -> bool:
    """The envelope's decoded fields (what the signature and the chain are checked on) are equal."""
    try:
        before, after = json.loads(original), json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(after, dict) or set(after) != set(before) or after.get("format") != before["format"]:
        return False
    if not isinstance(after.get("chain"), list) or len(after["chain"]) != len(before["chain"]):
        return False
    fields = lambda env: [_b64(env["payload"]), _b64(env["signature"])] + [_b64(c) for c in env["chain"]]  # noqa: E731
    decoded = fields(after)
    return None not in decoded and decoded == fields(before)


def _nvgpu_json_unsigned_only(original: bytes, data: bytes) -> bool:
    try:
        before, after = json.loads(original), json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(after, list) or not after:
        return False
    # The list is not signed as a whole (each GPU signs only its own transcript), so whole devices
    # may be missing: the mutated list must be the seed's devices, in order, some left out.
    remaining = iter(before)
    return all(any(_same_device(a, b) for a in remaining) for b in after)


def _same_device(a: dict, b: Any) -> bool:
    """The same transcript (bytes after its signature, as in the binary form, may be appended)."""
    evidence_a = _b64(a.get("evidence"))
    evidence_b = _b64(b.get("evidence")) if isinstance(b, dict) else None
    if evidence_a is None or evidence_b is None or not evidence_b.startswith(evidence_a):
        return False
    pem_a, pem_b = _b64(a.get("certificate")), _b64(b.get("certificate"))
    return pem_a is not None and pem_b is not None and _same_chain(pem_a, pem_b, extra_allowed=True)


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        return None


def _same_chain(pem_a: bytes, pem_b: bytes, *, extra_allowed: bool) -> bool:
    """Same leaf and every non-self-signed certificate kept; unless `extra_allowed`, no certificate
    that `pem_a` lacks (TDX refuses any embedded certificate that is neither its CA nor a pinned root)."""
    a, b = _der_chain(pem_a), _der_chain(pem_b)
    if not a or not b or a[0][0] != b[0][0]:
        return False
    all_a, all_b = {der for der, _ in a}, {der for der, _ in b}
    issued = {der for der, self_signed in a if not self_signed}
    return issued <= all_b and (extra_allowed or all_b <= all_a)


def _der_chain(pem: bytes) -> list[tuple[bytes, bool]]:
    """(DER, self-signed?) per decodable certificate, in order; [] when the PEM does not decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            certs = x509.load_pem_x509_certificates(pem.rstrip(b"\x00"))
        except ValueError:
            return []
        return [(c.public_bytes(Encoding.DER), c.subject == c.issuer) for c in certs]
