"""Join attestation benchmark (not a test): what a join costs the admitting verifier, per evidence
format and collateral state, in one run.

    .venv/bin/python benchmarks/join_collateral_bench.py [--samples 20] [--json]

No root, no namespaces, no vLLM: the emulated Intel PCS and AMD KDS of a local cluster's trust
(runtime/local/trust, `--tee mixed`) run on 127.0.0.1, the joining node's evidence comes through
configfs-tsm's layout (emulated TDX / SNP) or the simulated attester, and the admission Verifier
does exactly what it does on a challenge reply (own collateral, carried collateral merged,
verification, policy). Cases per format:
  cold    empty verifier cache: TCB info, QE identity, PCK CRL, Root CA CRL (TDX) or VCEK, chain,
          CRL (SNP) fetched from the emulator first
  warm    the verifier's cache holds fresh collateral (within its refresh interval)
  shared  empty verifier cache, vendors down: the joining node's shared collateral carries it
Each sample: collect the evidence (with the node's shared collateral) + verify + validate.
The tunnel part of a join (announce -> working tunnels) is benchmarks/overlay_bench.py's; add
the difference between a row here and the `sim` row to it for a join with that evidence.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from conclave.overlay.evidence import NodeEvidenceSource, SimEvidenceSource
from conclave.overlay.proto import conclave_pb2 as pb
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation.core import TeeType
from conclave.runtime.attestation.emulated import identity, service
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource, EmulatedTdxSource
from conclave.runtime.attestation.policy import Policy
from conclave.runtime.attestation.sim import SimulatedRoot
from conclave.runtime.local import trust as local_trust
from conclave.runtime.manifest.document import DeploymentManifest

STAGES = [("bench-n0", "head", (0, 10)), ("bench-n1", "worker", (10, 20)), ("bench-n2", "worker", (20, 30))]
NET = ipaddress.IPv4Network("10.80.0.0/16")
GOOD = bytes.fromhex("ab" * 48)


def one(verifier, source, report_data: bytes) -> float:
    t0 = time.perf_counter()
    item = source.collect(report_data)[0]
    verified = verifier._verify_item(pb.EvidenceItem(tee=str(item.tee), data=item.data, certs=list(item.certs),
                                                     collateral=item.collateral), TeeType(item.tee), nonce=None)
    verifier._validate(verified)
    return time.perf_counter() - t0


def summary(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[max(0, int(len(ms) * 0.95) - 1)], 2),
            "samples": len(ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)   # the vendors-down case logs every failed fetch
    work = Path(tempfile.mkdtemp(prefix="conclave-join-bench-"))
    trust = local_trust.create(work / "local-bench", stages=STAGES, model_digest="aa" * 32,
                               overlay_cidr=str(NET), rendezvous=["198.18.0.1:51822"], tee="mixed")
    manifest = DeploymentManifest.load(trust.manifest_path, trusted_owner=trust.owner_fingerprint)
    pcs = service.start_vendor("pcs", trust.vendor_state("pcs"), "127.0.0.1", 0)
    kds = service.start_vendor("kds", trust.vendor_state("kds"), "127.0.0.1", 0)
    services = VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url, kds=kds.base_url,
                              refresh_after_s=3600)
    counter = iter(range(1 << 30))

    def verifier():
        return make_verifier(policy=manifest.policy, manifest_digest=manifest.digest, overlay=NET,
                             services=services, collateral_dir=work / f"cache-{next(counter)}")

    def source_of(node: str) -> NodeEvidenceSource:
        host = identity.host_from_secret_bytes(trust.host_identity(node))
        src = NodeEvidenceSource(EmulatedTdxSource(host) if trust.tees[node] == "tdx" else EmulatedSnpSource(host))
        src.share_collateral(verifier().collateral_for)    # the node's own cache, as its agent wires it
        return src

    rd = bytes(range(64))
    result: dict = {}
    try:
        root = SimulatedRoot.generate()
        sim_policy = Policy.from_dict({"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
                                       "sim": {"measurement": [GOOD.hex()]}})
        from conclave.overlay.admission import Verifier
        sim_verifier = Verifier(policy=sim_policy, manifest_digest=b"\x42" * 32, overlay=NET,
                                trusted_sim_roots=[root.certificate])
        sim_src = SimEvidenceSource(root.issue_attester("bench-sim", measurement=GOOD))
        one(sim_verifier, sim_src, rd)
        result["sim"] = summary([one(sim_verifier, sim_src, rd) for _ in range(args.samples)])
        for tee, node in (("tdx", "bench-n0"), ("snp", "bench-n1")):
            assert trust.tees[node] == tee
            src = source_of(node)
            src.collect(rd)                                   # the node's own cache filled
            cold = [one(verifier(), src, rd) for _ in range(args.samples)]
            warm_v = verifier()
            one(warm_v, src, rd)
            warm = [one(warm_v, src, rd) for _ in range(args.samples)]
            pcs.set_down(True)
            kds.set_down(True)
            try:
                shared = [one(verifier(), src, rd) for _ in range(args.samples)]
            finally:
                pcs.set_down(False)
                kds.set_down(False)
            result[f"emulated_{tee}"] = {"cold": summary(cold), "warm": summary(warm), "shared": summary(shared)}
    finally:
        pcs.stop()
        kds.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"sim: {result['sim']['median_ms']} ms (p95 {result['sim']['p95_ms']})")
        for tee in ("tdx", "snp"):
            r = result[f"emulated_{tee}"]
            print(f"emulated {tee}: cold {r['cold']['median_ms']} ms (p95 {r['cold']['p95_ms']}), warm "
                  f"{r['warm']['median_ms']} ms (p95 {r['warm']['p95_ms']}), shared with vendors down "
                  f"{r['shared']['median_ms']} ms (p95 {r['shared']['p95_ms']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
