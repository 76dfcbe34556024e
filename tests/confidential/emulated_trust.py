"""Shared set-up of the emulated-hardware unit tests: a local cluster's trust material (mixed TDX/SNP
hosts, test roots, signed manifest) made by local mode's own trust module, and its emulated PCS/KDS."""
from __future__ import annotations

from contextlib import contextmanager

from conclave.runtime.attestation.emulated import service
from conclave.runtime.local import trust as local_trust
from conclave.runtime.manifest.document import DeploymentManifest


def stages(cluster: str) -> list[tuple[str, str, tuple[int, int]]]:
    return [(f"cv{cluster}-n0", "head", (0, 10)), (f"cv{cluster}-n1", "worker", (10, 20)),
            (f"cv{cluster}-n2", "worker", (20, 30))]


def create(folder, cluster: str, *, model_digest: str, overlay_cidr: str):
    return local_trust.create(folder, stages=stages(cluster), model_digest=model_digest, overlay_cidr=overlay_cidr,
                              rendezvous=["198.18.0.1:51822"], tee="mixed")


def manifest_of(trust) -> DeploymentManifest:
    return DeploymentManifest.load(trust.manifest_path, trusted_owner=trust.owner_fingerprint)


@contextmanager
def vendor_services(trust):
    """The cluster's emulated Intel PCS and AMD KDS on loopback: yields (pcs, kds)."""
    pcs = service.start_vendor("pcs", trust.vendor_state("pcs"), "127.0.0.1", 0)
    kds = service.start_vendor("kds", trust.vendor_state("kds"), "127.0.0.1", 0)
    try:
        yield pcs, kds
    finally:
        pcs.stop()
        kds.stop()
