"""Seeds and mutators shared by the Hypothesis fuzz tests and benchmarks/fuzz_evidence.py."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

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
    import warnings
    from cryptography.utils import CryptographyDeprecationWarning
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
