"""Emulated H100s in local mode without a cluster (issue 15): the cluster trust makes the GPU authority,
provisions every host and signs stages that ask for GPUs; the node and broker arguments carry the GPU
flags and the emulated NVIDIA URLs; a node verifier built from the local manifest (what every node
runs) admits a host with its GPU and refuses one switch at a time with its reason; one host's GPU
evidence replayed by another is refused; `conclave verify --local` gets the NVIDIA URLs and the
client's GPU collateral is built to the manifest's test roots."""
from __future__ import annotations

import argparse
import ipaddress
import json
import stat

import pytest
from cryptography import x509

from conclave.overlay.addressing import derive_address
from conclave.overlay.admission import AdmissionRejected
from conclave.overlay.prover import answer_challenge
from conclave.overlay.evidence import NodeEvidenceSource
from conclave.overlay.identity import Announcement, NodeIdentity, Role
from conclave.overlay.nonces import NonceCache
from conclave.runtime.agent.verifier import VendorServices, make_verifier
from conclave.runtime.attestation.core import Reason, TeeType
from conclave.runtime.attestation.emulated import identity, nvgpu_device as emu, service
from conclave.runtime.attestation.emulated.tsm import EmulatedSnpSource, EmulatedTdxSource
from conclave.runtime.attestation.nvgpu_requirement import GpuRequirement
from conclave.runtime.local import trust as local_trust

from . import emulated_trust

CLUSTER = "gpu"
STAGES = emulated_trust.stages(CLUSTER)
OVERLAY = ipaddress.IPv4Network("10.76.0.0/16")
WORKER = STAGES[1][0]


@pytest.fixture(scope="module")
def trust(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpus") / f"local-{CLUSTER}"
    return local_trust.create(folder, stages=STAGES, model_digest="ef" * 32, overlay_cidr=str(OVERLAY),
                              rendezvous=["198.18.0.1:51822"], tee="mixed", gpus=None)


@pytest.fixture(scope="module")
def manifest(trust):
    return emulated_trust.manifest_of(trust)


@pytest.fixture(scope="module")
def vendors(trust):
    """The cluster's emulated PCS, KDS and NVIDIA services, each from the state its process gets."""
    with emulated_trust.vendor_services(trust) as (pcs, kds):
        nvidia = service.start_vendor("nvidia", trust.vendor_state("nvidia"), "127.0.0.1", 0)
        try:
            yield pcs, kds, nvidia
        finally:
            nvidia.stop()


@pytest.fixture()
def switches(trust):
    """Every host's GPUs back to their defaults after a test (the trust is module-wide)."""
    yield
    for folder in trust.gpu_device_dirs.values():
        for gpu in emu.gpu_dirs(folder):
            emu.set_switches(gpu, **emu.DEFAULT_SWITCHES)


def test_gpus_per_host_default_to_one_with_emulated_tees_and_none_with_sim():
    assert local_trust.resolve_gpus("mixed", None) == 1 and local_trust.resolve_gpus("tdx", 3) == 3
    assert local_trust.resolve_gpus("snp", 0) == 0 and local_trust.resolve_gpus("sim", None) == 0
    for tee, bad in (("sim", 1), ("mixed", 9), ("mixed", -1), ("mixed", True)):
        with pytest.raises(ValueError):
            local_trust.resolve_gpus(tee, bad)


def test_stages_ask_for_h100s_and_the_policy_names_the_gpu_roots_only_as_unsafe(trust, manifest):
    assert trust.gpus_per_host == 1
    for stage in manifest.stages:
        assert stage.gpus == GpuRequirement(count=1, models=("H100",), cc_mode=True, ppcie=False)
    policy = manifest.policy_dict
    assert "nvgpu" in policy["allowed_tee"] and policy["nvgpu"] == {"require_rim": True}
    assert policy["production"] is False and policy["require_revocation_check"] is True
    roots = x509.load_pem_x509_certificates(trust.gpu_roots_pem_path.read_bytes())
    assert roots == [trust.gpu.device_root, trust.gpu.rim_root]
    assert x509.load_pem_x509_certificate(policy["unsafe_test_roots"]["nvgpu"][0].encode()) == trust.gpu.device_root
    assert x509.load_pem_x509_certificate(policy["unsafe_test_roots"]["nvgpu_rim"][0].encode()) == trust.gpu.rim_root
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)   # noqa: E731
    assert mode(trust.folder / local_trust.GPU_AUTHORITY_KEY) == 0o600 and mode(trust.gpu_roots_pem_path) == 0o644
    assert sorted(trust.gpu_device_dirs) == sorted(n for n, _, _ in STAGES)
    serials = set()
    for folder in trust.gpu_device_dirs.values():
        assert folder.is_relative_to(trust.folder) and [g.name for g in emu.gpu_dirs(folder)] == ["gpu0"]
        assert mode(folder / "gpu0" / emu.KEY_FILE) == 0o600
        serials |= {g["serial"] for g in emu.gpu_summary(folder)}
    assert len(serials) == len(STAGES)   # every host its own GPU
    restored = local_trust.load_gpu_authority(trust.folder)
    assert restored.device_root == trust.gpu.device_root and "redacted" in repr(trust)


def test_sim_and_gpus_zero_make_no_gpus(tmp_path):
    for tee, gpus in (("sim", None), ("mixed", 0)):
        t = local_trust.create(tmp_path / f"local-{tee}", stages=STAGES, model_digest="ef" * 32,
                               overlay_cidr=str(OVERLAY), rendezvous=[], tee=tee, gpus=gpus)
        m = emulated_trust.manifest_of(t)
        assert t.gpu is None and t.gpu_device_dirs == {} and all(s.gpus is None for s in m.stages)
        assert "nvgpu" not in m.policy_dict["allowed_tee"]
        with pytest.raises(KeyError):
            t.vendor_state("nvidia")


def test_node_and_broker_arguments_carry_the_gpus_and_the_nvidia_urls(trust, tmp_path):
    from conclave.runtime.local.attested import AttestedOverlayNetwork
    from conclave.runtime.local.network import ClusterContext
    net = AttestedOverlayNetwork()
    net.trust = trust
    net.context = ClusterContext(cluster_id=CLUSTER, run_dir=tmp_path, state_dir=tmp_path, layer_ranges=[],
                                 model_digest="ef" * 32, public_port=8443)
    net._emulators = {"pcs": {"url": "http://198.18.0.4:51840"}, "kds": {"url": "http://198.18.0.4:51841"},
                      "nvidia": {"url": "http://198.18.0.4:51842", "ocsp_url": "http://198.18.0.4:51843/"}}
    argv = net._evidence_args(WORKER)
    assert argv[argv.index("--gpu-evidence") + 1] == "emulated"
    assert argv[argv.index("--gpu-device-dir") + 1] == str(trust.gpu_device_dirs[WORKER])
    assert argv[argv.index("--rim-url") + 1] == "http://198.18.0.4:51842"
    assert argv[argv.index("--nvidia-ocsp-url") + 1] == "http://198.18.0.4:51843/"
    assert not any("PRIVATE" in a for a in argv)
    net._agents = {"h1": {"name": WORKER, "socket": tmp_path / "s", "ifname": "w1", "overlay_ip": "10.76.0.9"}}
    facts = net.node_facts("h1")
    assert facts["gpu_device_dir"] == str(trust.gpu_device_dirs[WORKER])
    assert [(g["gpu"], g["model"], g["present"], g["cc_mode"]) for g in facts["gpus"]] == [("gpu0", "H100", True, True)]
    described = net.describe()
    assert described["gpu_test_roots_pem"] == str(trust.gpu_roots_pem_path) and described["gpus_per_host"] == 1


def test_broker_cli_accepts_the_nvidia_urls():
    from conclave.runtime.cli import build_parser
    args = build_parser().parse_args(["broker", "--manifest", "m.json", "--key-dir", "k", "--host", "198.18.0.4",
                              "--rim-url", "http://198.18.0.4:51842", "--nvidia-ocsp-url", "http://198.18.0.4:51843/"])
    from conclave.runtime.cli.node import vendor_services
    s = vendor_services(args)
    assert s.rim == "http://198.18.0.4:51842" and s.nvidia_ocsp == "http://198.18.0.4:51843/"


# --- what every node's verifier does with the local manifest ------------------------------------------------

def _verifier(manifest, vendors, folder):
    pcs, kds, nvidia = vendors
    v = make_verifier(policy=manifest.policy, manifest_digest=manifest.digest, overlay=OVERLAY,
                      services=VendorServices(pcs=pcs.base_url, pcs_root_crl=pcs.root_crl_url, kds=kds.base_url,
                                              rim=nvidia.base_url, nvidia_ocsp=nvidia.ocsp_url, refresh_after_s=0),
                      collateral_dir=folder)
    return v.bind_manifest(manifest)


class RecordedGpu:
    """A host presenting GPU evidence recorded from another host (replay)."""
    tee = TeeType.NVGPU

    def __init__(self, recorded: bytes):
        self.recorded = recorded

    def collect(self, nonce: bytes) -> bytes:
        return self.recorded


def _challenge(trust, manifest, node: str, gpu_source):
    host = identity.host_from_secret_bytes(trust.host_identity(node))
    cpu = EmulatedTdxSource(host) if trust.tees[node] == "tdx" else EmulatedSnpSource(host)
    ident = NodeIdentity.generate()
    role = Role.HEAD if node == STAGES[0][0] else Role.WORKER
    ann = Announcement(node_id=node, owner=local_trust.OWNER_LABEL, role=role, underlay_host="198.18.0.7",
                       admission_port=51821, wireguard_port=51820, wg_public_key=ident.wg_public,
                       hpke_public_key=ident.hpke_public, overlay_address=derive_address(node, OVERLAY))
    nonces = NonceCache()
    reply = answer_challenge(me=ann, source=NodeEvidenceSource(cpu, [gpu_source]), manifest_digest=manifest.digest,
                             nonce=nonces.issue(node))
    return ann, reply, nonces


def _admit(verifier, trust, manifest, node, gpu_source=None):
    gpu_source = gpu_source or emu.EmulatedGpuSource(trust.gpu_device_dirs[node])
    ann, reply, nonces = _challenge(trust, manifest, node, gpu_source)
    return verifier.admit(challenged=ann, reply=reply, nonces=nonces, enrolment_optional=True), reply


def test_every_host_with_its_gpu_is_admitted_with_rims_and_ocsp(trust, manifest, vendors, tmp_path):
    v = _verifier(manifest, vendors, tmp_path / "collateral")
    for node, _, _ in STAGES:
        admitted, reply = _admit(v, trust, manifest, node)
        assert admitted.announcement.node_id == node
        assert [i.tee for i in reply.evidence] == [trust.tees[node], "nvgpu"]


@pytest.mark.parametrize("switch, reason", [
    ({"present": False}, Reason.GPU_MISSING),
    ({"cc_mode": False}, Reason.GPU_CC_OFF),
    ({"tamper_index": 6}, Reason.RIM_MISMATCH),
])
def test_one_switch_on_one_host_refuses_it_with_its_reason(trust, manifest, vendors, tmp_path, switches, switch,
                                                           reason):
    v = _verifier(manifest, vendors, tmp_path / "collateral")
    emu.set_switches(trust.gpu_device_dirs[WORKER] / "gpu0", **switch)
    with pytest.raises(AdmissionRejected) as err:
        _admit(v, trust, manifest, WORKER)
    assert err.value.reason == reason, err.value
    _admit(v, trust, manifest, STAGES[2][0])   # the other hosts are not affected
    emu.set_switches(trust.gpu_device_dirs[WORKER] / "gpu0", **emu.DEFAULT_SWITCHES)
    assert _admit(v, trust, manifest, WORKER)[0].announcement.node_id == WORKER   # restored: admitted


def test_gpu_evidence_replayed_from_another_host_is_refused(trust, manifest, vendors, tmp_path):
    """Host n2's GPU evidence, recorded for one of n2's own challenges, presented by n1 (whose own GPU
    is gone): bound to n2's challenge, not n1's, so n1 is refused nonce_mismatch."""
    v = _verifier(manifest, vendors, tmp_path / "collateral")
    other = STAGES[2][0]
    admitted, reply = _admit(v, trust, manifest, other)     # n2's own, honest answer: admitted
    recorded = bytes(reply.evidence[1].data)
    assert reply.evidence[1].tee == "nvgpu" and len(json.loads(recorded)) == 1
    with pytest.raises(AdmissionRejected) as err:
        _admit(v, trust, manifest, WORKER, gpu_source=RecordedGpu(recorded))
    assert err.value.reason == Reason.NONCE_MISMATCH


# --- conclave verify --local and the client's GPU collateral ------------------------------------------------

def test_verify_local_takes_the_nvidia_urls_and_builds_gpu_collateral_to_the_manifest_roots(tmp_path, monkeypatch,
                                                                                             trust, manifest):
    from conclave.runtime.cli import verify as verify_cli
    from conclave.runtime.errors import UsageError
    from conclave.runtime.local import state as state_mod
    monkeypatch.setenv("CONCLAVE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("CONCLAVE_CACHE_DIR", str(tmp_path / "cache"))
    nvidia = {"url": "http://198.18.0.4:51842", "ocsp_url": "http://198.18.0.4:51843/"}
    state_mod.write({"phase": "ready", "endpoint": "https://127.0.0.1:8443/v1", "ca_cert": str(tmp_path / "ca.pem"),
                     "manifest": str(trust.manifest_path), "supervisor_pid": None,
                     "network": {"manifest": str(trust.manifest_path), "owner_fingerprint": trust.owner_fingerprint,
                                 "sim_root": str(trust.root_pem_path), "emulators": {"nvidia": nvidia}}})
    base = dict(url=None, local=True, manifest=None, owner_pubkey=None, owner_fingerprint=None, unsafe_unpinned=False,
                sim_root=None, ca=None, timeout=5.0, pcs_url=None, pcs_root_crl_url=None, kds_url=None,
                rim_url=None, nvidia_ocsp_url=None, max_cached_age=None, json=True)
    args = argparse.Namespace(**base)
    verify_cli.resolve_local(args)
    assert args.rim_url == nvidia["url"] and args.nvidia_ocsp_url == nvidia["ocsp_url"]
    with pytest.raises(UsageError) as exc:
        verify_cli.resolve_local(argparse.Namespace(**dict(base, rim_url="http://elsewhere:1")))
    assert exc.value.reason == "verify_local_conflict"
    collateral_for = verify_cli.client_collateral(args, manifest)
    gpu = collateral_for.__self__.gpu_source
    assert gpu.device_roots == (trust.gpu.device_root,) and gpu.rim_roots == (trust.gpu.rim_root,)
    assert gpu.rim_service.base_url.startswith(nvidia["url"])
