"""Trust material of one local confidential cluster: emulated TEE hardware (or the simulated TEE
root), owner key, signed manifest.

TEE modes (`conclave up --local --tee`): tdx, snp, mixed (default: TDX, SNP, TDX, ... by stage
index) and sim. For tdx/snp/mixed the orchestrator plays Intel and AMD: it makes this cluster's
TdxTestHierarchy / SnpTestHierarchy (emulated/), whose quotes and reports carry the "local image"
measurement as MRTD / MEASUREMENT, and writes their roots to test-roots.pem. The roots reach the
manifest's policy only as unsafe_test_roots (which production refuses); everything else in that
policy is as strict as production: revocation must be checked, collateral is at most
LOCAL_MAX_COLLATERAL_AGE_S old, TCB UpToDate, SNP minimum TCB, no debug, the local measurement.
Hierarchy keys stay in this process's memory: each node gets its own host identity and each
emulator its vendor state over stdin (host_identity / vendor_state).

GPUs (`conclave up --local --gpus K`, default 1 with emulated TDX/SNP, none with sim): the
orchestrator plays NVIDIA too. It makes this cluster's GpuAuthority (emulated/nvgpu_device: a
device-identity PKI shaped like NVIDIA's and a test RIM root), keeps it 0600 as gpu-authority.key
(local development only, like sim-root.key), writes both roots to gpu-test-roots.pem (0644),
provisions every host's device dir gpus/<node>/gpu<i> (each GPU's attestation key 0600, switches)
and signs a manifest whose stages each ask for `gpus` {count K, models [H100], CC mode}, with a
policy that allows nvgpu, requires RIM validation (nvgpu.require_rim) and names the two GPU test
roots only as unsafe_test_roots.nvgpu / .nvgpu_rim (refused in production).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from conclave.runtime.attestation.emulated import identity as emulated_identity
from conclave.runtime.attestation.emulated.nvgpu_device import GpuAuthority
from conclave.runtime.attestation.emulated.snp_issuer import DEFAULT_TCB, SnpImage, SnpTestHierarchy
from conclave.runtime.attestation.emulated.tdx_issuer import XFAM, TdImage, TdxTestHierarchy
from conclave.runtime.attestation.sim import SimulatedAttester, SimulatedRoot
from conclave.runtime.manifest import document as doc
from conclave.runtime.manifest import ed25519_keys as keys
from conclave.runtime.measure.engine import engine_digest

OWNER_LABEL = "local"            # the one node owner local mode plays (it enrols every stage)
NODE_OWNER_KEY = "node-owner.key"   # that owner's Ed25519 key (0600), beside the deployment owner's
TEE_MODES = ("mixed", "tdx", "snp", "sim")
DEFAULT_TEE_MODE = "mixed"
SNP_PRODUCT = "genoa"
LOCAL_MAX_COLLATERAL_AGE_S = 3600   # stricter than production's default: the emulators publish fresh copies
DEFAULT_GPUS = 1                    # emulated H100s per host with emulated CPU TEEs
MAX_GPUS = 8
GPU_MODELS = ("H100",)
GPU_AUTHORITY_KEY = "gpu-authority.key"
GPU_ROOTS_PEM = "gpu-test-roots.pem"


def node_tees(mode: str, count: int) -> list[str]:
    """The CPU TEE of each stage: mixed alternates TDX, SNP, TDX, ... by index."""
    if mode not in TEE_MODES:
        raise ValueError(f"TEE mode must be one of {', '.join(TEE_MODES)}")
    if mode == "mixed":
        return ["tdx" if i % 2 == 0 else "snp" for i in range(count)]
    return [mode] * count


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


def resolve_gpus(tee: str, gpus: int | None) -> int:
    """GPUs per host: `--gpus K` (0..MAX_GPUS) with emulated CPU TEEs, default DEFAULT_GPUS; the
    simulated TEE has no emulated GPUs (asking for some there is a ValueError)."""
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_GPUS):
        raise ValueError(f"--gpus must be 0..{MAX_GPUS}")
    if tee == "sim":
        if gpus:
            raise ValueError("emulated GPUs need emulated CPU TEEs (--tee mixed, tdx or snp), not --tee sim")
        return 0
    return DEFAULT_GPUS if gpus is None else gpus


def gpu_requirement(count: int):
    """What every local stage asks of its GPUs: `count` H100s in CC mode (RIMs: the policy's require_rim)."""
    from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement
    return GpuRequirement(count=count, models=GPU_MODELS, cc_mode=True)


def emulated_policy(measurement: bytes, tees: Sequence[str], roots: dict[str, bytes],
                    gpu_roots: tuple[bytes, bytes] | None = None) -> dict:
    """Production-strict except for unsafe_test_roots (the emulated vendors' roots, PEM per TEE;
    gpu_roots: the emulated GPUs' (device identity root, RIM root), with RIM validation required)."""
    allowed = sorted(set(tees))
    policy: dict = {"production": False, "allowed_tee": allowed + (["nvgpu"] if gpu_roots else []),
                    "require_revocation_check": True,
                    "max_collateral_age": LOCAL_MAX_COLLATERAL_AGE_S,
                    "unsafe_test_roots": {tee: [roots[tee].decode()] for tee in allowed}}
    if gpu_roots:
        policy["nvgpu"] = {"require_rim": True}
        policy["unsafe_test_roots"]["nvgpu"] = [gpu_roots[0].decode()]
        policy["unsafe_test_roots"]["nvgpu_rim"] = [gpu_roots[1].decode()]
    if "tdx" in allowed:
        policy["tdx"] = {"mr_td": [measurement.hex()], "xfam": [XFAM.hex()]}
    if "snp" in allowed:
        policy["snp"] = {"measurement": [measurement.hex()], "min_tcb": dict(DEFAULT_TCB[SNP_PRODUCT])}
    return policy


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
    tee_mode: str = "sim"
    tees: dict[str, str] = field(default_factory=dict)     # node name -> tdx | snp | sim
    test_roots_pem_path: Path | None = None
    tdx: TdxTestHierarchy | None = field(default=None, repr=False)
    snp: SnpTestHierarchy | None = field(default=None, repr=False)
    gpus_per_host: int = 0
    gpu: GpuAuthority | None = field(default=None, repr=False)
    gpu_device_dirs: dict[str, Path] = field(default_factory=dict)   # node name -> its emulated GPUs' dir
    gpu_roots_pem_path: Path | None = None

    def __repr__(self) -> str:
        return f"LocalTrust(folder={self.folder}, manifest={self.manifest_path}, tee={self.tee_mode}, keys=<redacted>)"

    @property
    def node_owner_key_path(self) -> Path:
        """The key of the node owner local mode plays: it signs every node's stage enrolment."""
        return self.folder / NODE_OWNER_KEY

    def attester(self, node: str) -> SimulatedAttester:
        return self.root.issue_attester(node, measurement=self.measurement)

    def host_identity(self, node: str) -> bytes:
        """The node's emulated TEE identity with its private keys (for its stdin bundle only)."""
        tee = self.tees.get(node)
        hierarchy = self.tdx if tee == "tdx" else self.snp if tee == "snp" else None
        if hierarchy is None:
            raise KeyError(f"{node} has no emulated TEE")
        return emulated_identity.host_secret_bytes(hierarchy.host(node))

    def vendor_state(self, kind: str) -> bytes:
        """The emulated PCS ("pcs"), KDS ("kds") or NVIDIA services ("nvidia": signed RIMs and OCSP
        issuer keys) state with the vendor keys (its stdin only)."""
        if kind == "nvidia":
            if self.gpu is None:
                raise KeyError("this cluster has no emulated GPUs")
            return self.gpu.service_state()
        hierarchy = self.tdx if kind == "pcs" else self.snp if kind == "kds" else None
        if hierarchy is None:
            raise KeyError(f"this cluster has no emulated {kind}")
        return emulated_identity.vendor_secret_bytes(hierarchy)


def create(folder: Path, *, stages: Sequence[tuple[str, str, tuple[int, int]]], model_digest: str,
           overlay_cidr: str, rendezvous: Sequence[str], model_source: dict | None = None,
           tee: str = "sim", gpus: int | None = 0) -> LocalTrust:
    """stages: (node name, role, (layer start, end)) in pipeline order; tee: one of TEE_MODES;
    gpus: emulated H100s per host (None: DEFAULT_GPUS with emulated TEEs; see resolve_gpus)."""
    tees = dict(zip([node for node, _, _ in stages], node_tees(tee, len(stages))))
    gpu_count = resolve_gpus(tee, gpus)
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
    node_owner = keys.generate_key_file(folder / NODE_OWNER_KEY)   # local mode plays the node owner too
    tdx = snp = gpu = None
    test_roots_pem = gpu_roots_pem = gpu_roots = None
    gpu_dirs: dict[str, Path] = {}
    policy = sim_policy(measurement)
    if tee != "sim":
        cluster = folder.name
        roots: dict[str, bytes] = {}
        if "tdx" in tees.values():
            tdx = TdxTestHierarchy(cluster, image=TdImage(mr_td=measurement))
            roots["tdx"] = tdx.root_pem
        if "snp" in tees.values():
            snp = SnpTestHierarchy(cluster, product=SNP_PRODUCT, image=SnpImage(measurement=measurement))
            roots["snp"] = snp.root_pem
        for node, kind in tees.items():   # every host's certificate exists before the vendors start
            (tdx if kind == "tdx" else snp).host(node)
        test_roots_pem = folder / "test-roots.pem"
        _write(test_roots_pem, b"".join(roots.values()), 0o644)
        if gpu_count:
            gpu = GpuAuthority.generate()
            _write(folder / GPU_AUTHORITY_KEY, gpu.to_secret_bytes(), 0o600)
            gpu_roots = (_pem(gpu.device_root), _pem(gpu.rim_root))
            gpu_roots_pem = folder / GPU_ROOTS_PEM
            _write(gpu_roots_pem, b"".join(gpu_roots), 0o644)
            gpu_base = folder / "gpus"
            gpu_base.mkdir(mode=0o700, exist_ok=True)
            for serial, node in enumerate(tees, start=1):
                gpu_dirs[node] = gpu.provision(gpu_base / node, serial, gpu_count)[0].parent
        policy = emulated_policy(measurement, list(tees.values()), roots, gpu_roots)
    requirement = gpu_requirement(gpu_count) if gpu_count else None
    content = doc.build_content(
        owner_public_key=keys.public_key_bytes(owner), policy=policy, model_digest=model_digest,
        engine_digest=engine_digest(), owners={OWNER_LABEL: keys.public_key_bytes(node_owner)},
        stages=[doc.Stage(node, OWNER_LABEL, role, start, end, requirement)
                for node, role, (start, end) in stages],
        overlay_cidr=overlay_cidr, rendezvous=list(rendezvous), model_source=model_source)
    manifest_path = folder / "manifest.json"
    _write(manifest_path, doc.sign_content(content, owner), 0o644)
    return LocalTrust(folder, root, measurement, manifest_path, owner_key_path,
                      keys.fingerprint(owner.public_key()), root_pem, root_key, tee_mode=tee, tees=tees,
                      test_roots_pem_path=test_roots_pem, tdx=tdx, snp=snp, gpus_per_host=gpu_count, gpu=gpu,
                      gpu_device_dirs=gpu_dirs, gpu_roots_pem_path=gpu_roots_pem)


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.PEM)


def load_gpu_authority(folder: Path) -> GpuAuthority:
    """The cluster's emulated GPU authority (local development / tests provisioning another host)."""
    return GpuAuthority.from_secret_bytes((folder / GPU_AUTHORITY_KEY).read_bytes())


def load_root(folder: Path) -> SimulatedRoot:
    """The cluster's simulated root (local development / tests adding a host)."""
    return SimulatedRoot.from_secret_bytes((folder / "sim-root.key").read_bytes())
