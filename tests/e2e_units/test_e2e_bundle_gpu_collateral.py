"""`conclave verify`'s bundle check fetches its own GPU collateral: the client's collateral_for
is asked for every GPU evidence item (as for TDX/SNP) and its answer is used by GPU
verification (here an unusable OCSP answer, which a non-production policy tolerates)."""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone

from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.nvgpu_collateral import NvgpuCollateral
from conclave.runtime.attestation.ocsp import OcspResponses
from conclave.runtime.endpoint import verify_bundle

from test_e2e_bundle_gpu import TLS, _builder, gpu_gen, gpu_setup  # noqa: F401 (fixtures)


def test_client_collateral_source_is_asked_for_gpu_evidence(deployment, gpu_setup):  # noqa: F811
    manifest, pki, items_for = gpu_setup
    nonce = secrets.token_bytes(32)
    bundle = _builder(deployment, manifest, items_for).build(nonce)
    asked: list[TeeType] = []

    def collateral_for(tee, data):
        asked.append(TeeType(tee))
        return NvgpuCollateral(ocsp=OcspResponses((b"\x30\x03\x0a\x01\x06",))) if tee == TeeType.NVGPU else None

    r = verify_bundle(json.dumps(bundle).encode(), manifest=manifest, tls_spki_sha256=TLS, nonce=nonce,
                      at=datetime.now(timezone.utc), trusted_roots=[deployment.root.certificate],
                      vendor_roots=[pki.root], collateral_for=collateral_for)
    assert r.ok, r.to_json()
    assert asked.count(TeeType.NVGPU) == 2   # one GPU on each of the two nodes
