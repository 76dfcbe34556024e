"""Trust material of one local confidential cluster: simulated TEE root, owner key, signed manifest.

Why generated per cluster: local mode stands in for N CVMs of different owners. The simulated
root plays the hardware vendor (it certifies each host's SimulatedAttester for the local image
measurement), the owner key plays the deployment owner (it signs the manifest every node checks
at boot). Public files (root certificate, manifest) are 0644; the owner key and the simulated
root's key are 0600 in the state directory (local development only: they let `conclave` add a
host to the running cluster and tests build a host with bad evidence) and go away with
`conclave down`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from conclave.runtime.attestation.sim import SimulatedAttester, SimulatedRoot
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.measure.engine import engine_digest

OWNER_LABEL = "local"


def local_measurement() -> bytes:
    """The 48-byte measurement of the "local image": SHA-384 over this Conclave installation's
    package files (relative path + content, sorted), so a changed runtime is a changed measurement."""
    import conclave.runtime as rt
    import conclave.overlay as ov
    h = hashlib.sha384(b"conclave/local-image/v1\x00")
    for pkg in (rt, ov):
        root = Path(pkg.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                           and p.suffix in (".py", ".proto", ".pem", ".json")):
            rel = f"{pkg.__name__}/{path.relative_to(root).as_posix()}".encode()
            data = path.read_bytes()
            h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.digest()


def sim_policy(measurement: bytes) -> dict:
    return {"production": False, "allowed_tee": ["sim"], "unsafe_allow_simulated": True,
            "sim": {"measurement": [measurement.hex()]}}


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class LocalTrust:
    folder: Path
    root: SimulatedRoot
    measurement: bytes
    manifest_path: Path
    owner_key_path: Path
    owner_fingerprint: str
    root_pem_path: Path
    root_key_path: Path

    def __repr__(self) -> str:
        return f"LocalTrust(folder={self.folder}, manifest={self.manifest_path}, keys=<redacted>)"

    def attester(self, node: str) -> SimulatedAttester:
        return self.root.issue_attester(node, measurement=self.measurement)


def create(folder: Path, *, stages: Sequence[tuple[str, str, tuple[int, int]]], model_digest: str,
           overlay_cidr: str, rendezvous: Sequence[str], model_source: dict | None = None) -> LocalTrust:
    """stages: (node name, role, (layer start, end)) in pipeline order."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    root = SimulatedRoot.generate()
    measurement = local_measurement()
    root_pem = folder / "sim-root.pem"
    _write(root_pem, root.cert_pem, 0o644)
    root_key = folder / "sim-root.key"
    _write(root_key, root.to_secret_bytes(), 0o600)
    owner_key_path = folder / "owner.key"
    owner = keys.generate_key_file(owner_key_path)
    os.chmod(owner_key_path, 0o600)
    content = doc.build_content(
        owner_public_key=keys.public_key_bytes(owner), policy=sim_policy(measurement), model_digest=model_digest,
        engine_digest=engine_digest(),
        stages=[doc.Stage(node, OWNER_LABEL, role, start, end) for node, role, (start, end) in stages],
        overlay_cidr=overlay_cidr, rendezvous=list(rendezvous), model_source=model_source)
    manifest_path = folder / "manifest.json"
    _write(manifest_path, doc.sign_content(content, owner), 0o644)
    return LocalTrust(folder, root, measurement, manifest_path, owner_key_path,
                      keys.fingerprint(owner.public_key()), root_pem, root_key)


def load_root(folder: Path) -> SimulatedRoot:
    """The cluster's simulated root (local development / tests adding a host)."""
    return SimulatedRoot.from_secret_bytes((folder / "sim-root.key").read_bytes())
